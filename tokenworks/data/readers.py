"""Readers: sources on disk (or the built-in corpus) in, document records out.

A source is a directory (searched recursively), a glob, a single file, or the name
`python-docs` (the interpreter's own documentation). Formats by suffix: `.txt`, `.md`,
`.rst` (as they are), `.html`/`.htm` (visible text; scripts and styles dropped), `.jsonl`
(one object per line; text and id fields configurable) and `.parquet`. A file that cannot
be read (binary, not UTF-8, malformed) becomes a rejection record with the reason, never
an exception: one bad file does not stop a corpus.
"""

from __future__ import annotations

import glob
import hashlib
import json
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, ClassVar

from tokenworks.data.python_docs import SOURCE as PYTHON_DOCS
from tokenworks.data.python_docs import python_docs
from tokenworks.errors import ConfigError

TEXT_SUFFIXES = (".txt", ".md", ".rst")
HTML_SUFFIXES = (".html", ".htm")
SUPPORTED_SUFFIXES = (*TEXT_SUFFIXES, *HTML_SUFFIXES, ".jsonl", ".parquet")
_BINARY_PROBE_BYTES = 8192

Record = dict[str, Any]


def document_record(doc_id: str, text: str, source: str, **metadata: Any) -> Record:
    return {"id": doc_id, "text": text, "source": source, "metadata": metadata}


def rejection(record: Record, stage: str, reason: str, **details: Any) -> Record:
    """The record, marked as dropped by `stage` for `reason` (the pipeline files it under rejected/)."""
    return {**record, "rejected": {"stage": stage, "reason": reason, **details}}


def discover_files(sources: list[str]) -> list[Record]:
    """One record per input file ({"path", "source"}), sorted within each source; duplicates once."""
    files: list[Record] = []
    seen: set[str] = set()
    for source in sources:
        if source == PYTHON_DOCS:
            continue
        path = Path(source)
        if path.is_dir():
            matches = sorted(p for p in path.rglob("*") if p.is_file())
        elif path.is_file():
            matches = [path]
        else:
            matches = sorted(Path(p) for p in glob.glob(source, recursive=True) if Path(p).is_file())
        if not matches:
            raise ConfigError(f"source {source!r} matches no files (and is not {PYTHON_DOCS!r})")
        for match in matches:
            if str(match) not in seen:
                seen.add(str(match))
                files.append({"path": str(match), "source": source})
    return files


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def python_docs_records() -> list[Record]:
    return [document_record(doc.id, doc.text, doc.source, **doc.metadata) for doc in python_docs()]


def read_files(files: list[Record], text_field: str = "text", id_field: str = "id") -> list[Record]:
    """Batch function: file records in, document (or rejection) records out."""
    out: list[Record] = []
    for file in files:
        path, source = file["path"], file["source"]
        suffix = Path(path).suffix.lower()
        try:
            if suffix in TEXT_SUFFIXES or suffix in HTML_SUFFIXES:
                text = _read_text(path)
                if suffix in HTML_SUFFIXES:
                    text = html_to_text(text)
                out.append(document_record(path, text, source, path=path))
            elif suffix == ".jsonl":
                out.extend(_read_jsonl(path, source, text_field, id_field))
            elif suffix == ".parquet":
                out.extend(_read_parquet(path, source, text_field, id_field))
            else:
                out.append(_file_rejection(file, f"unsupported file type {suffix or '(none)'!r}"))
        except _Unreadable as error:
            out.append(_file_rejection(file, str(error)))
    return out


class _Unreadable(Exception):
    """A file (not a line of it) cannot be read; the reason is the message."""


def _file_rejection(file: Record, reason: str) -> Record:
    return rejection(document_record(file["path"], "", file["source"], path=file["path"]), "read", reason)


def _read_text(path: str) -> str:
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise _Unreadable(f"cannot read: {error.strerror or error}") from None
    if b"\x00" in data[:_BINARY_PROBE_BYTES]:
        raise _Unreadable("binary file (NUL bytes)")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise _Unreadable(f"not valid UTF-8 (byte {error.start})") from None


def _read_jsonl(path: str, source: str, text_field: str, id_field: str) -> list[Record]:
    out = []
    for number, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        fallback_id = f"{path}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            record = document_record(fallback_id, line, source, path=path, line=number)
            out.append(rejection(record, "read", f"line {number}: not valid JSON ({error.msg})"))
            continue
        text = row.get(text_field) if isinstance(row, dict) else None
        doc_id = str(row[id_field]) if isinstance(row, dict) and row.get(id_field) is not None else fallback_id
        if not isinstance(text, str):
            record = document_record(doc_id, line, source, path=path, line=number)
            out.append(rejection(record, "read", f"line {number}: no string field {text_field!r}"))
            continue
        out.append(document_record(doc_id, text, source, path=path, line=number))
    return out


def _read_parquet(path: str, source: str, text_field: str, id_field: str) -> list[Record]:
    import pyarrow.parquet as pq  # only parquet inputs pay for the import

    try:
        table = pq.read_table(path)
    except Exception as error:  # pyarrow raises several unrelated types for corrupt files
        raise _Unreadable(f"not a readable parquet file: {error}") from None
    if text_field not in table.column_names:
        raise _Unreadable(f"no column {text_field!r} (columns: {', '.join(table.column_names)})")
    texts = table.column(text_field).to_pylist()
    ids = table.column(id_field).to_pylist() if id_field in table.column_names else [None] * len(texts)
    out = []
    for row, (text, doc_id) in enumerate(zip(texts, ids, strict=True)):
        record = document_record(
            str(doc_id) if doc_id is not None else f"{path}:{row}", text or "", source, path=path, row=row
        )
        out.append(
            record if isinstance(text, str) else rejection(record, "read", f"row {row}: {text_field!r} is not a string")
        )
    return out


class _VisibleText(HTMLParser):
    """Collects the text a browser would show: no scripts, styles or other invisible elements."""

    INVISIBLE: ClassVar[set[str]] = {"script", "style", "noscript", "template", "svg", "head"}
    BLOCKS: ClassVar[set[str]] = {"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "pre", "section", "article", "blockquote", "table", "ul", "ol", "dd", "dt"}  # fmt: skip

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._hidden_depth = 0

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag in self.INVISIBLE:
            self._hidden_depth += 1
        elif tag in self.BLOCKS:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self.INVISIBLE:
            self._hidden_depth = max(0, self._hidden_depth - 1)
        elif tag in self.BLOCKS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self._hidden_depth:
            self.parts.append(data)


def html_to_text(html: str) -> str:
    parser = _VisibleText()
    parser.feed(html)
    parser.close()
    return "".join(parser.parts)
