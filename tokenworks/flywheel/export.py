"""`tokenworks flywheel log export`: the request log as JSON Lines or Parquet, one record per request.

Each record is the `requests` row with its feedback and flags as lists. In JSON Lines the
request and response are JSON objects (`request`, `response`); in Parquet, where one schema
must fit every payload, they stay JSON text (`request_json`, `response_json`).
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenworks.flywheel import store

FORMATS = ("jsonl", "parquet")


def log_records(db: str | Path) -> list[dict]:
    """Every logged request, oldest first, with `feedback` and `flags` lists."""
    connection = store.connect_existing(db)
    try:
        records = store.all_requests(connection)
        feedback = _grouped(connection, "SELECT request_id, rating, correction, created FROM feedback ORDER BY id")
        flags = _grouped(connection, "SELECT request_id, rule, reason, value, created FROM flags ORDER BY rule")
    finally:
        connection.close()
    for record in records:
        record["feedback"] = feedback.get(record["request_id"], [])
        record["flags"] = flags.get(record["request_id"], [])
    return records


def export_log(db: str | Path, out: str | Path, format: str) -> int:
    """Write the log to `out` in `format` (jsonl or parquet); returns the number of records."""
    if format not in FORMATS:
        raise store.RequestLogError(f"unknown export format {format!r}: use jsonl or parquet")
    records = log_records(db)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    if format == "jsonl":
        with open(out, "w", encoding="utf-8") as handle:
            for record in records:
                handle.write(json.dumps(_with_payloads(record), ensure_ascii=False) + "\n")
    else:
        _write_parquet(records, out)
    return len(records)


def _with_payloads(record: dict) -> dict:
    record = dict(record)
    for column, key in (("request_json", "request"), ("response_json", "response")):
        text = record.pop(column)
        record[key] = json.loads(text) if text else None
    return record


def _write_parquet(records: list[dict], out: str | Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    feedback = pa.list_(pa.struct([("rating", pa.float64()), ("correction", pa.string()), ("created", pa.float64())]))
    flags = pa.list_(
        pa.struct([("rule", pa.string()), ("reason", pa.string()), ("value", pa.float64()), ("created", pa.float64())])
    )
    types = {"created": pa.float64(), "http_status": pa.int64(), "flagged_at": pa.float64()}
    types |= {name: pa.int64() for name in ("prompt_tokens", "completion_tokens", "cached_tokens")}
    types |= {name: pa.float64() for name in ("ttft_s", "tpot_s", "e2e_s", "mean_logprob", "min_logprob")}
    fields = [(name, types.get(name, pa.string())) for name in (*store.REQUEST_COLUMNS, "flagged_at")]
    schema = pa.schema([*fields, ("feedback", feedback), ("flags", flags)])
    pq.write_table(pa.Table.from_pylist(records, schema=schema), out)


def _grouped(connection, query: str) -> dict[str, list[dict]]:
    grouped: dict[str, list[dict]] = {}
    for row in connection.execute(query):
        item = dict(row)
        grouped.setdefault(item.pop("request_id"), []).append(item)
    return grouped
