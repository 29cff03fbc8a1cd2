"""`tokenworks ingest` on a WARC as a user (or the WARC benchmark) runs it: a real subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tokenworks.data.workspace import Workspace

from .formats import ENGLISH, FRENCH, page, write_warc


def ingest(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "tokenworks", "ingest", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


def test_a_warc_with_languages_keeps_the_main_content_of_the_pages_asked_for(tmp_path: Path) -> None:
    base = {"date": "2024-03-01T12:00:00Z", "type": "text/html"}
    crawl = write_warc(tmp_path / "crawl.warc.gz", [
        {**base, "url": "https://example.org/en", "id": "<urn:uuid:1>", "body": page("Opening hours", ENGLISH)},
        {**base, "url": "https://example.org/fr", "id": "<urn:uuid:2>", "body": page("Heures", FRENCH)},
    ])  # fmt: skip
    out = tmp_path / "out"
    result = ingest(str(crawl), "--languages", "en", "--out", str(out), "--workers", "1", "--vocab-size", "300",
                    "--quality", "min_words=10", "--no-near-dedup")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "Languages kept: en 1" in result.stdout
    [dropped] = [json.loads(line) for line in (out / "rejected" / "language.jsonl").read_text().splitlines()]
    assert (dropped["id"], dropped["metadata"]["url"], dropped["language"]) == (
        "<urn:uuid:2>",
        "https://example.org/fr",
        "fr",
    )
    assert json.loads((out / "manifest.json").read_text())["parameters"]["html_extractor"] == "trafilatura"
    [kept] = Workspace(out).load_documents("clean")
    assert kept["text"] == f"Opening hours\n{ENGLISH}"


def test_resiliparse_is_chosen_by_html_extractor_and_an_unknown_one_refused(tmp_path: Path) -> None:
    page_file = tmp_path / "hours.html"
    page_file.write_bytes(page("Opening hours", ENGLISH))
    out = tmp_path / "out"
    result = ingest(str(page_file), "--html-extractor", "resiliparse", "--out", str(out), "--workers", "1",
                    "--vocab-size", "300", "--quality", "min_words=10", "--no-near-dedup")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads((out / "manifest.json").read_text())["parameters"]["html_extractor"] == "resiliparse"
    [kept] = Workspace(out).load_documents("read")
    assert kept["text"] == f"Opening hours\n\n{ENGLISH}"
    refused = ingest(str(page_file), "--html-extractor", "justext", "--out", str(tmp_path / "other"))
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert refused.stderr.strip() == "error: unknown HTML extractor 'justext'; use 'trafilatura' or 'resiliparse'"


def test_an_unknown_language_is_a_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text(ENGLISH)
    result = ingest(str(tmp_path / "a.txt"), "--languages", "en,xx", "--out", str(tmp_path / "out"))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "unknown language code xx; known: ace, af," in result.stderr
