"""The ingest pipeline on a corpus of every new format: drops by reason, documents per
language, and the same manifest from one worker, two workers and Ray."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tokenworks.data.pipeline import IngestOptions, read_batch_size, run_ingest
from tokenworks.data.workspace import Workspace

from .formats import (
    C_SOURCE,
    ENGLISH,
    FRENCH,
    GERMAN,
    MINIFIED_JS,
    page,
    write_docx,
    write_gzip,
    write_pdf,
    write_tar_gz,
    write_warc,
    write_zstd,
)


def write_mixed_corpus(root: Path) -> None:
    root.mkdir(parents=True)
    write_gzip(root / "notes.txt.gz", f"Notes. {ENGLISH}".encode())
    write_zstd(root / "LIESMICH.zst", GERMAN.encode())
    (root / "LISEZMOI").write_bytes(FRENCH.encode("latin-1"))
    members = {"src/main.c": C_SOURCE.encode(), "src/app.min.js": MINIFIED_JS.encode(),
               "src/logo.png": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "src/README": f"Readme. {ENGLISH}".encode()}  # fmt: skip
    write_tar_gz(root / "project.tar.gz", members)
    write_pdf(root / "report.pdf", [ENGLISH.replace(". ", ".\n")], title="Report")
    write_pdf(root / "scan.pdf", [""])
    write_docx(root / "minutes.docx", "Minutes", [f"Minutes. {ENGLISH}"], [["item", "cost"]])
    base = {"date": "2024-03-01T12:00:00Z", "type": "text/html"}
    write_warc(
        root / "crawl.warc.gz",
        [{**base, "url": "https://example.org/en", "id": "<urn:uuid:1>", "body": page("Hours", ENGLISH)},
         {**base, "url": "https://example.org/fr", "id": "<urn:uuid:2>", "body": page("Heures", FRENCH)},
         {**base, "url": "https://example.org/a.png", "id": "<urn:uuid:3>", "type": "image/png", "body": b"\x89PNG"}],
    )  # fmt: skip


def _options(source: Path, out: Path, **changes) -> IngestOptions:
    settings = {"workers": 1, "vocab_size": 300, "validation_fraction": 0.2, "exact_dedup": False,
                "near_dedup": False, "quality_overrides": {"min_words": 5}, "languages": ["en", "de"], **changes}  # fmt: skip
    return IngestOptions(sources=[str(source)], out=out, **settings)


def _reasons(out: Path, stage: str) -> dict[str, str]:
    rows = map(json.loads, (out / "rejected" / f"{stage}.jsonl").read_text().splitlines())
    return {row["id"]: row["reason"] for row in rows}


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    root = tmp_path_factory.mktemp("mixed")
    write_mixed_corpus(root / "docs")
    return root, run_ingest(_options(root / "docs", root / "out"))


def test_every_format_is_read_and_every_drop_has_its_reason(mixed) -> None:
    root, result = mixed
    docs, out = root / "docs", root / "out"
    tar = docs / "project.tar.gz"
    assert _reasons(out, "read") == {
        f"{tar}!src/logo.png": "binary file (PNG image)",
        str(docs / "scan.pdf"): "no text layer (a scanned or image-only PDF needs OCR)",
        "<urn:uuid:3>": "not HTML (image/png)",
    }
    assert _reasons(out, "language") == {
        str(docs / "LISEZMOI"): "language fr (probability 1.00) is not one of en, de",
        "<urn:uuid:2>": "language fr (probability 1.00) is not one of en, de",
    }
    assert _reasons(out, "quality") == {f"{tar}!src/app.min.js": "longest line 1,500 characters > 1,000"}
    clean = next(stage for stage in result.stages if stage.stage == "clean")
    assert clean.languages == {"en": 5, "code:C": 1, "de": 1}
    assert result.manifest["stages"][1]["languages"] == clean.languages
    assert [(s.stage, s.documents_in, s.documents_out) for s in result.stages[:2]] == [
        ("read", 8, 10),
        ("clean", 10, 7),
    ]


def test_two_workers_and_ray_give_the_same_manifest(mixed, tmp_path, request) -> None:
    root, _ = mixed
    expected = (root / "out" / "manifest.json").read_bytes()
    run_ingest(_options(root / "docs", tmp_path / "two", workers=2))
    assert (tmp_path / "two" / "manifest.json").read_bytes() == expected
    request.getfixturevalue("ray_instance")  # skips where Ray Data is not installed
    run_ingest(_options(root / "docs", tmp_path / "ray", workers=2, executor="ray"))
    assert (tmp_path / "ray" / "manifest.json").read_bytes() == expected
    for stage in ("read", "language", "quality"):
        assert (tmp_path / "ray" / "rejected" / f"{stage}.jsonl").read_bytes() == (
            root / "out" / "rejected" / f"{stage}.jsonl"
        ).read_bytes()


def test_the_html_extractor_reruns_every_stage_and_is_recorded(mixed, tmp_path) -> None:
    root, first = mixed
    out = tmp_path / "out"
    shutil.copytree(root / "out", out)
    again = run_ingest(_options(root / "docs", out, html_extractor="resiliparse"))
    assert not any(stage.resumed for stage in again.stages)
    extractors = [result.manifest["parameters"]["html_extractor"] for result in (first, again)]
    assert extractors == ["trafilatura", "resiliparse"]
    texts = [{d["id"]: d["text"] for d in Workspace(where).load_documents("read")} for where in (root / "out", out)]
    assert [text["<urn:uuid:1>"] for text in texts] == [f"Hours\n{ENGLISH}", f"Hours\n\n{ENGLISH}"]
    run_ingest(_options(root / "docs", tmp_path / "two", workers=2, html_extractor="resiliparse"))
    assert (tmp_path / "two" / "manifest.json").read_bytes() == (out / "manifest.json").read_bytes()


@pytest.mark.parametrize(("files", "workers", "size"), [(8, 2, 1), (100, 2, 12), (4568, 2, 256), (3, 4, 1)])
def test_read_batches_spread_a_few_large_files_over_the_workers(files: int, workers: int, size: int) -> None:
    assert read_batch_size(files, workers) == size
