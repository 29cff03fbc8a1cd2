"""Records of text: JSON Lines (one object a line, read as a stream) and parquet (one row a
document); the text and id fields are configurable."""

from __future__ import annotations

import json
from collections.abc import Iterator

from tokenworks.data.readers.inputs import Input, Unreadable, seekable
from tokenworks.data.records import Record, rejection


def read_jsonl(item: Input, text_field: str, id_field: str) -> Iterator[Record]:
    for number, raw in enumerate(item.stream, start=1):
        fallback_id = f"{item.doc_id}:{number}"
        try:
            line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
        except UnicodeDecodeError as error:
            yield item.rejection(f"line {number}: not valid UTF-8 (byte {error.start})", fallback_id, line=number)
            continue
        if not line.strip():
            continue
        line = line.rstrip("\r\n")
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            record = item.document(line, fallback_id, line=number)
            yield rejection(record, "read", f"line {number}: not valid JSON ({error.msg})")
            continue
        text = row.get(text_field) if isinstance(row, dict) else None
        doc_id = str(row[id_field]) if isinstance(row, dict) and row.get(id_field) is not None else fallback_id
        if not isinstance(text, str):
            record = item.document(line, doc_id, line=number)
            yield rejection(record, "read", f"line {number}: no string field {text_field!r}")
            continue
        yield item.document(text, doc_id, line=number)


def read_parquet(item: Input, text_field: str, id_field: str) -> Iterator[Record]:
    import pyarrow.parquet as pq  # only parquet inputs pay for the import

    with seekable(item) as handle:
        try:
            table = pq.read_table(handle)
        except Exception as error:  # pyarrow raises several unrelated types for corrupt files
            raise Unreadable(f"not a readable parquet file: {error}") from None
    if text_field not in table.column_names:
        raise Unreadable(f"no column {text_field!r} (columns: {', '.join(table.column_names)})")
    texts = table.column(text_field).to_pylist()
    ids = table.column(id_field).to_pylist() if id_field in table.column_names else [None] * len(texts)
    for row, (text, doc_id) in enumerate(zip(texts, ids, strict=True)):
        record = item.document(text or "", str(doc_id) if doc_id is not None else f"{item.doc_id}:{row}", row=row)
        if isinstance(text, str):
            yield record
        else:
            yield rejection(record, "read", f"row {row}: {text_field!r} is not a string")
