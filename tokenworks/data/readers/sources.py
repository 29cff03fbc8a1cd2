"""Sources: what the command line names (directories, globs, files, `python-docs`) as the list
of files to read, and the hash of each that the manifest records."""

from __future__ import annotations

import glob
import hashlib
from pathlib import Path

from tokenworks.data.python_docs import SOURCE as PYTHON_DOCS
from tokenworks.data.python_docs import python_docs
from tokenworks.data.records import Record, document_record
from tokenworks.errors import ConfigError


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
