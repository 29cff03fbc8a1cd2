"""The log writer and its file on their own: commits by time and by count, retention, PII
redaction, and export to JSON Lines and Parquet and back."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest

from tokenworks.flywheel import store
from tokenworks.flywheel.entries import LoggedRequest
from tokenworks.flywheel.export import export_log, log_records
from tokenworks.flywheel.writer import LogWriter

DAY = 86400.0


def entry(
    request_id: str, created: float | None = None, prompt: str = "A list is", text: str = "mutable"
) -> LoggedRequest:
    response = {"id": request_id, "choices": [{"index": 0, "text": text, "finish_reason": "length"}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 2, "prompt_tokens_details": {"cached_tokens": 1}}}  # fmt: skip
    return LoggedRequest(
        request_id=request_id, created=time.time() if created is None else created, endpoint="completions",
        request={"prompt": prompt, "max_tokens": 2}, response=response, ttft_s=0.01, tpot_s=0.002, e2e_s=0.012,
        mean_logprob=-1.25, min_logprob=-2.0, workload_id="w",
    )  # fmt: skip


def committed_ids(db) -> list[str]:
    with sqlite3.connect(db) as connection:  # another connection: sees committed rows only
        if connection.execute("SELECT 1 FROM sqlite_master WHERE name = 'requests'").fetchone() is None:
            return []  # the writer's thread has not made its tables yet
        return [row[0] for row in connection.execute("SELECT request_id FROM requests ORDER BY request_id")]


def test_the_file_is_in_wal_mode(tmp_path) -> None:
    writer = LogWriter(tmp_path / "log.db")
    writer.flush().result(10)
    with sqlite3.connect(tmp_path / "log.db") as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    writer.close()


def test_rows_commit_within_the_flush_interval_or_at_the_row_count(tmp_path) -> None:
    db = tmp_path / "log.db"
    writer = LogWriter(db, flush_interval=0.2, flush_rows=3)
    writer.put(entry("a"))
    deadline = time.monotonic() + 5
    while committed_ids(db) != ["a"]:
        assert time.monotonic() < deadline, "a row was not committed within its flush interval"
        time.sleep(0.02)
    writer.close()
    slow = LogWriter(db, flush_interval=60, flush_rows=3)
    for request_id in ("b", "c"):
        slow.put(entry(request_id))
    time.sleep(0.3)
    assert committed_ids(db) == ["a"]  # two of three rows: waiting for the interval
    slow.put(entry("d"))
    deadline = time.monotonic() + 5
    while committed_ids(db) != ["a", "b", "c", "d"]:
        assert time.monotonic() < deadline, "three rows did not commit at once"
        time.sleep(0.02)
    slow.close()


def test_a_row_is_mapped_to_its_columns(tmp_path) -> None:
    db = tmp_path / "log.db"
    writer = LogWriter(db)
    writer.put(entry("cmpl-1", created=1000.0))
    writer.close()
    (record,) = log_records(db)
    assert {key: record[key] for key in ("request_id", "created", "endpoint", "status", "http_status",
                                         "workload_id", "prompt_tokens", "completion_tokens", "cached_tokens",
                                         "finish_reasons", "mean_logprob", "min_logprob")} == {
        "request_id": "cmpl-1", "created": 1000.0, "endpoint": "completions", "status": "ok", "http_status": 200,
        "workload_id": "w", "prompt_tokens": 3, "completion_tokens": 2, "cached_tokens": 1,
        "finish_reasons": '["length"]', "mean_logprob": -1.25, "min_logprob": -2.0,
    }  # fmt: skip


def test_retention_deletes_old_requests_with_their_feedback_and_flags_at_start(tmp_path) -> None:
    db = tmp_path / "log.db"
    writer = LogWriter(db)
    now = time.time()
    writer.put(entry("old", created=now - 10 * DAY))
    writer.put(entry("recent", created=now - 2 * DAY))
    writer.put(entry("new", created=now))
    writer.flush().result(10)
    assert writer.feedback("old", 1, None).result(10) is not None
    writer.close()
    with store.connect_existing(db) as connection:
        store.write_flags(connection, ["old"], [("old", "correction", "why", None)], now)
    LogWriter(db, retention_days=3).close()
    assert committed_ids(db) == ["new", "recent"]
    with sqlite3.connect(db) as connection:
        assert connection.execute("SELECT count(*) FROM feedback").fetchone() == (0,)
        assert connection.execute("SELECT count(*) FROM flags").fetchone() == (0,)


def test_pii_is_redacted_before_writing_when_asked(tmp_path) -> None:
    db = tmp_path / "log.db"
    writer = LogWriter(db, redact_pii=True)
    writer.put(entry("cmpl-1", prompt="Mail jane.doe@example.com or call 555-123-4567", text="from 10.0.0.1"))
    writer.flush().result(10)
    writer.feedback("cmpl-1", None, "write to bob@example.org").result(10)
    writer.close()
    (record,) = log_records(db)
    assert json.loads(record["request_json"])["prompt"] == "Mail <EMAIL> or call <PHONE>"
    assert json.loads(record["response_json"])["choices"][0]["text"] == "from <IP_ADDRESS>"
    assert record["feedback"][0]["correction"] == "write to <EMAIL>"
    unredacted = LogWriter(tmp_path / "plain.db")
    unredacted.put(entry("cmpl-1", prompt="jane.doe@example.com"))
    unredacted.close()
    assert json.loads(log_records(tmp_path / "plain.db")[0]["request_json"])["prompt"] == "jane.doe@example.com"


@pytest.fixture()
def filled_log(tmp_path):
    db = tmp_path / "log.db"
    writer = LogWriter(db)
    writer.put(entry("cmpl-a", created=1000.0))
    writer.put(entry("cmpl-b", created=2000.0, text="immutable"))
    writer.flush().result(10)
    writer.feedback("cmpl-b", -1, "mutable").result(10)
    writer.close()
    with store.connect_existing(db) as connection:
        store.write_flags(connection, ["cmpl-b"], [("cmpl-b", "negative_rating", "rated -1 (below 0)", -1.0)], 3000.0)
    return db


def test_export_to_jsonl_round_trips(filled_log, tmp_path) -> None:
    out = tmp_path / "log.jsonl"
    assert export_log(filled_log, out, "jsonl") == 2
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    records = log_records(filled_log)
    for line, record in zip(lines, records, strict=True):
        assert line["request"] == json.loads(record.pop("request_json"))
        assert line["response"] == json.loads(record.pop("response_json"))
        assert {key: value for key, value in line.items() if key not in ("request", "response")} == record
    assert [line["request_id"] for line in lines] == ["cmpl-a", "cmpl-b"]
    assert lines[1]["feedback"][0] | {"created": 0} == {"rating": -1.0, "correction": "mutable", "created": 0}
    assert lines[1]["flags"] == [{"rule": "negative_rating", "reason": "rated -1 (below 0)", "value": -1.0,
                                  "created": 3000.0}]  # fmt: skip


def test_export_to_parquet_round_trips(filled_log, tmp_path) -> None:
    out = tmp_path / "log.parquet"
    result = subprocess.run(
        [sys.executable, "-m", "tokenworks", "flywheel", "log", "export", "--db", str(filled_log), "--format",
         "parquet", "--out", str(out)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "2 requests" in result.stderr
    assert pq.read_table(out).to_pylist() == log_records(filled_log)


def test_an_unknown_export_format_is_one_line(filled_log, tmp_path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tokenworks", "flywheel", "log", "export", "--db", str(filled_log), "--format", "csv",
         "--out", str(tmp_path / "x.csv")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 1
    assert "unknown export format 'csv': use jsonl or parquet" in result.stderr
