"""What each tool made of the generated crawl, page by page, and how far its extracted text agrees
with trafilatura's own: the reading side of `ingest_vs_datatrove.py --pipeline warc`.

Pages are keyed by URL (both tools keep it in the metadata; the ground truth is keyed by it).

Agreement: a tool's text for a page and trafilatura's own `extract` of the same HTML are
compared as sequences of words after Unicode NFC, with control characters removed and every run
of whitespace made one space (the line structure differs between extractors and is normalised
away by both tools anyway). A page agrees exactly when the word sequences are equal; its
similarity is difflib's ratio on the two word sequences, 2 x (words in matching runs) /
(words in both). A page with no text from both sides agrees; text on one side only is 0.
"""

from __future__ import annotations

import difflib
import json
import re
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

# the bar a page must clear to count as agreeing, when its words are not all equal
SIMILARITY = 0.95
SIMILARITY_STEPS = (0.99, 0.95, 0.9, 0.8)
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


@dataclass
class PageFates:
    """What one tool did with each HTML page of the crawl (sets of URLs)."""

    texts: dict[str, str] = field(default_factory=dict)  # the text extraction gave, where it gave any
    no_text: set[str] = field(default_factory=set)  # HTML pages extraction gave nothing for
    language: set[str] = field(default_factory=set)  # dropped by the language filter
    quality: set[str] = field(default_factory=set)  # dropped by the Gopher rules (or normalisation)
    flagged: set[str] = field(default_factory=set)  # dropped as duplicates, exact or near
    kept: int = 0
    by_stage: dict[str, int] = field(default_factory=dict)

    @property
    def before_dedup(self) -> set[str]:
        return self.no_text | self.language | self.quality


def _rows(paths: Iterable[Path]) -> Iterator[dict]:
    for path in sorted(paths):
        with open(path, encoding="utf-8") as lines:
            yield from (json.loads(line) for line in lines if line.strip())


def _url(row: dict) -> str:
    metadata = row.get("metadata") or {}
    if isinstance(metadata, str):
        metadata = json.loads(metadata)
    return metadata.get("url") or str(row["id"])


def tokenworks_fates(out: Path, html_pages: set[str]) -> PageFates:
    """From OUT/work/read.parquet (each document as extracted) and OUT/rejected/<stage>.jsonl."""
    import pyarrow.parquet as pq

    fates = PageFates()
    table = pq.read_table(out / "work" / "read.parquet", columns=["text", "metadata"]).to_pydict()
    for text, metadata in zip(table["text"], table["metadata"], strict=True):
        fates.texts[_url({"metadata": metadata})] = text
    for path in sorted((out / "rejected").glob("*.jsonl")):
        urls = {_url(row) for row in _rows([path])} & html_pages  # robots.txt and images are no pages
        fates.by_stage[path.stem] = len(urls)
        if path.stem == "read":
            fates.no_text |= urls
        elif path.stem == "language":
            fates.language |= urls
        elif "dedup" in path.stem:
            fates.flagged |= urls
        else:
            fates.quality |= urls
    fates.no_text |= html_pages - set(fates.texts) - fates.no_text
    fates.kept = len(html_pages) - len(fates.before_dedup | fates.flagged)
    return fates


def datatrove_fates(out: Path, html_pages: set[str]) -> PageFates:
    """From the exclusion writers' folders, filtered/ (what passed the filters) and output/."""
    fates = PageFates()
    folders = {"language": "rejected/language", "quality": "rejected/quality", "repetition": "rejected/repetition"}
    for stage, folder in folders.items():
        rows = list(_rows((out / folder).glob("*.jsonl")))
        fates.by_stage[stage] = len(rows)
        (fates.language if stage == "language" else fates.quality).update(_url(row) for row in rows)
        fates.texts.update((_url(row), row["text"]) for row in rows)
    fates.texts.update((_url(row), row["text"]) for row in _rows((out / "filtered").glob("*.jsonl")))
    fates.flagged = {_url(row) for row in _rows((out / "rejected/near_dedup").glob("*.jsonl"))}
    fates.by_stage["minhash"] = len(fates.flagged)
    fates.no_text = html_pages - set(fates.texts)
    fates.kept = sum(1 for _ in _rows((out / "output").glob("*.jsonl")))
    return fates


def comparable(text: str | None) -> list[str]:
    return _CONTROL.sub("", unicodedata.normalize("NFC", text or "")).split()


def agreement(reference: dict[str, str | None], texts: dict[str, str], pages: list[str]) -> dict[str, object]:
    """How often a tool's text for a page equals (or comes near) trafilatura's own extract."""
    exact = 0
    scores: list[float] = []
    extra_only = missing_only = 0  # where they differ: the tool has words trafilatura lacks, or the reverse
    for url in pages:
        theirs, ours = comparable(reference.get(url)), comparable(texts.get(url))
        if theirs == ours:
            exact += 1
            scores.append(1.0)
            continue
        matcher = difflib.SequenceMatcher(None, theirs, ours, autojunk=False)
        scores.append(matcher.ratio())
        operations = {op for op, *_ in matcher.get_opcodes() if op != "equal"}
        extra_only += operations == {"insert"}
        missing_only += operations == {"delete"}
    total = len(pages) or 1
    result: dict[str, object] = {
        "pages": len(pages),
        "exact": round(exact / total, 4),
        "agree": round(sum(score >= SIMILARITY for score in scores) / total, 4),
        "threshold": SIMILARITY,
        "mean_similarity": round(sum(scores) / total, 4),
        "differ_by_extra_words_only": extra_only,
        "differ_by_missing_words_only": missing_only,
    }
    for step in SIMILARITY_STEPS:
        result[f"similarity>={step}"] = round(sum(score >= step for score in scores) / total, 4)
    return result


def fidelity(texts: dict[str, str], main_texts: dict[str, str]) -> float:
    """Share of pages whose extracted words are exactly the generated main content's words."""
    hits = sum(comparable(texts.get(url)) == comparable(main) for url, main in main_texts.items())
    return round(hits / max(len(main_texts), 1), 4)


def read_reference(path: Path) -> dict[str, str | None]:
    return {row["url"]: row["text"] for row in _rows([path])}
