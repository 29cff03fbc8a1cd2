"""A small on-disk corpus with one of everything the ingest pipeline must handle."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


def prose(seed: int, words: int = 120) -> str:
    """Random English-like prose that passes the default quality rules."""
    rng = random.Random(seed)
    vocabulary = ["".join(rng.choice("etaoinshrdlucmfw") for _ in range(rng.randint(3, 8))) for _ in range(2000)]
    sentences, count = [], 0
    while count < words:
        length = rng.randint(8, 16)
        sentences.append(" ".join(rng.choice(vocabulary) for _ in range(length)).capitalize() + ".")
        count += length
    return "\n".join(" ".join(sentences[i : i + 3]) for i in range(0, len(sentences), 3))


def write_corpus(root: Path) -> dict[str, str]:
    """Write the corpus; returns the ids of the documents with a known fate."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "a.txt").write_text(prose(1))
    (root / "b.md").write_text("# Title\n\n" + prose(2))
    (root / "c.rst").write_text(prose(3) + "\nMail jane.doe@example.com or call 555-123-4567 from 192.168.1.20.")
    (root / "page.html").write_text(f"<html><body><script>var hidden = 1;</script><p>{prose(4)}</p></body></html>")
    (root / "exact_copy.txt").write_text(prose(1))  # the same text as a.txt
    near = prose(2).split(" ")
    near[10] = "changed"
    (root / "near_copy.md").write_text("# Title\n\n" + " ".join(near))  # one word off b.md
    (root / "short.txt").write_text("Too short to be a document.")
    (root / "binary.txt").write_bytes(b"\x00\x01\x02binary")
    (root / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    (root / "notes.pdf").write_bytes(b"%PDF-1.4")
    rows = [
        {"id": "j1", "text": prose(5)},
        {"id": "j2", "body": "no text field"},
        {"id": "j3", "text": prose(6)},
    ]
    lines = [json.dumps(row) for row in rows]
    lines.insert(2, "{not json")
    (root / "docs.jsonl").write_text("\n".join(lines) + "\n")
    pq.write_table(pa.table({"id": ["p1", "p2"], "text": [prose(7), prose(8)]}), root / "table.parquet")
    return {"exact": str(root / "exact_copy.txt"), "near": str(root / "near_copy.md"), "pii": str(root / "c.rst")}
