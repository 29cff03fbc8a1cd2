"""The request log's SQLite file: its tables, and the statements that write and read them.

One database in WAL mode (readers never block the writer, and a commit is one append to the
WAL) with `synchronous=NORMAL`: a commit survives the process being killed (the WAL is in the
OS's page cache), though not a power cut before the OS writes it out. Three tables:
`requests` (one row per request, its OpenAI payloads as JSON text), `feedback` (what users said
of a request) and `flags` (why a request deserves a second look, one row per rule).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from tokenworks.errors import TokenworksError

# The workload id of the flywheel's own evaluation requests (evaluate.py sends it): logged like any
# traffic, but never collected as traffic to learn from.
EVALUATION_WORKLOAD = "flywheel-evaluation"


class RequestLogError(TokenworksError):
    """The request log file is missing or is not one."""


# Columns of `requests`, in the order entries.py makes its rows.
REQUEST_COLUMNS = (
    "request_id", "created", "endpoint", "status", "http_status", "error", "model", "served_model", "adapter",
    "adapter_path", "workload_id", "prompt_tokens", "completion_tokens", "cached_tokens", "ttft_s", "tpot_s",
    "e2e_s", "finish_reasons", "mean_logprob", "min_logprob", "request_json", "response_json",
)  # fmt: skip

SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    request_id TEXT PRIMARY KEY,
    created REAL NOT NULL,            -- Unix time of the request's arrival
    endpoint TEXT NOT NULL,           -- completions or chat.completions
    status TEXT NOT NULL,             -- ok or error
    http_status INTEGER NOT NULL,
    error TEXT,                       -- the error's message, for status error
    model TEXT,                       -- as the request named it
    served_model TEXT,                -- the name that answered (the base model's or an adapter's)
    adapter TEXT,                     -- the LoRA adapter used, NULL for the base model
    adapter_path TEXT,                -- where that adapter was loaded from: which version answered
    workload_id TEXT,                 -- X-Workload-ID, else the request's user field
    prompt_tokens INTEGER,
    completion_tokens INTEGER,
    cached_tokens INTEGER,
    ttft_s REAL,                      -- seconds from arrival in the server to the first token
    tpot_s REAL,                      -- seconds per output token after the first
    e2e_s REAL,                       -- seconds from arrival to the last token
    finish_reasons TEXT,              -- JSON list, one per choice
    mean_logprob REAL,                -- over every output token of every choice
    min_logprob REAL,
    request_json TEXT,                -- the OpenAI request body
    response_json TEXT,               -- the answer (for a stream: what a non-streamed call returns)
    flagged_at REAL                   -- when `tokenworks flywheel flag` last looked at it; NULL: not yet
);
CREATE INDEX IF NOT EXISTS requests_created ON requests (created);
CREATE INDEX IF NOT EXISTS requests_unflagged ON requests (flagged_at) WHERE flagged_at IS NULL;
CREATE TABLE IF NOT EXISTS feedback (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id TEXT NOT NULL REFERENCES requests (request_id) ON DELETE CASCADE,
    rating REAL,
    correction TEXT,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS feedback_request ON feedback (request_id);
CREATE TABLE IF NOT EXISTS flags (
    request_id TEXT NOT NULL REFERENCES requests (request_id) ON DELETE CASCADE,
    rule TEXT NOT NULL,
    reason TEXT NOT NULL,
    value REAL,
    created REAL NOT NULL,
    PRIMARY KEY (request_id, rule)
);
"""


def connect(path: str | Path, check_same_thread: bool = True) -> sqlite3.Connection:
    """The log at `path`, created with its tables if new, in WAL mode."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    connection = sqlite3.connect(path, timeout=30.0, check_same_thread=check_same_thread)
    connection.row_factory = sqlite3.Row
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=NORMAL")
    connection.execute("PRAGMA foreign_keys=ON")
    connection.executescript(SCHEMA)
    return connection


def check_writable(path: str | Path) -> None:
    """Open (or create) the log at `path` once: a server refuses to start with a log it cannot write."""
    try:
        connect(path).close()
    except (sqlite3.Error, OSError) as error:
        raise RequestLogError(f"cannot write the request log at {path}: {error}") from None


def connect_existing(path: str | Path) -> sqlite3.Connection:
    """An existing log (the readers' way in: a mistyped path is an error, not a new empty log)."""
    if not Path(path).is_file():
        raise RequestLogError(f"no request log at {path}: give the file `tokenworks serve --log-db` writes")
    try:
        return connect(path)
    except sqlite3.DatabaseError as error:
        raise RequestLogError(f"{path} is not a request log: {error}") from None


def insert_requests(connection: sqlite3.Connection, rows: list[tuple]) -> None:
    """Rows in REQUEST_COLUMNS' order; a request id seen before keeps its first row."""
    marks = ", ".join("?" * len(REQUEST_COLUMNS))
    connection.executemany(f"INSERT OR IGNORE INTO requests ({', '.join(REQUEST_COLUMNS)}) VALUES ({marks})", rows)


def insert_feedback(
    connection: sqlite3.Connection, request_id: str, rating: float | None, correction: str | None, created: float
) -> dict | None:
    """The stored feedback row, or None when no request has this id. New feedback makes its
    request due for flagging again (its rating and correction are rules' inputs)."""
    if connection.execute("SELECT 1 FROM requests WHERE request_id = ?", (request_id,)).fetchone() is None:
        return None
    cursor = connection.execute(
        "INSERT INTO feedback (request_id, rating, correction, created) VALUES (?, ?, ?, ?)",
        (request_id, rating, correction, created),
    )
    connection.execute("UPDATE requests SET flagged_at = NULL WHERE request_id = ?", (request_id,))
    return {"id": cursor.lastrowid, "request_id": request_id, "rating": rating, "correction": correction,
            "created": created}  # fmt: skip


def delete_older_than(connection: sqlite3.Connection, cutoff: float) -> int:
    """Delete requests created before `cutoff` (Unix time), their feedback and flags with them."""
    return connection.execute("DELETE FROM requests WHERE created < ?", (cutoff,)).rowcount


def unflagged_requests(connection: sqlite3.Connection) -> list[dict]:
    """Requests `tokenworks flywheel flag` has not looked at since they were logged or got feedback,
    each with its latest feedback (rating, correction: None without any)."""
    rows = connection.execute(
        """SELECT r.*, f.rating, f.correction FROM requests r
           LEFT JOIN feedback f ON f.id = (SELECT max(id) FROM feedback WHERE request_id = r.request_id)
           WHERE r.flagged_at IS NULL ORDER BY r.created"""
    ).fetchall()
    return [dict(row) for row in rows]


def write_flags(
    connection: sqlite3.Connection, request_ids: list[str], flags: list[tuple[str, str, str, float | None]], now: float
) -> None:
    """Replace the flags of `request_ids` with `flags` (request_id, rule, reason, value); mark them looked at."""
    connection.executemany("DELETE FROM flags WHERE request_id = ?", [(rid,) for rid in request_ids])
    connection.executemany(
        "INSERT INTO flags (request_id, rule, reason, value, created) VALUES (?, ?, ?, ?, ?)",
        [(*flag, now) for flag in flags],
    )
    connection.executemany(
        "UPDATE requests SET flagged_at = ? WHERE request_id = ?", [(now, rid) for rid in request_ids]
    )


def all_requests(connection: sqlite3.Connection) -> list[dict]:
    return [dict(row) for row in connection.execute("SELECT * FROM requests ORDER BY created")]


def flagged_requests(connection: sqlite3.Connection, after: int, upto: int) -> list[dict]:
    """Requests logged after row `after` up to row `upto` (SQLite's rowid: the order of commits, so a
    slow request committed late is not missed) with at least one flag, each with its flags' rules
    (`rules`, a JSON list) and its latest feedback's correction (None without one)."""
    rows = connection.execute(
        """SELECT r.*, f.correction,
                  (SELECT json_group_array(rule) FROM flags WHERE request_id = r.request_id) AS rules
           FROM requests r
           LEFT JOIN feedback f ON f.id = (SELECT max(id) FROM feedback WHERE request_id = r.request_id)
           WHERE r.rowid > ? AND r.rowid <= ? AND r.workload_id IS NOT ?
             AND EXISTS (SELECT 1 FROM flags WHERE request_id = r.request_id)
           ORDER BY r.rowid""",
        (after, upto, EVALUATION_WORKLOAD),
    ).fetchall()
    return [dict(row) for row in rows]


def last_row(connection: sqlite3.Connection) -> int:
    """The rowid of the request logged last (0 for an empty log)."""
    return connection.execute("SELECT coalesce(max(rowid), 0) FROM requests").fetchone()[0]


def count_traffic(connection: sqlite3.Connection, after: int, upto: int) -> int:
    """Requests logged after row `after` up to row `upto`, the flywheel's evaluation requests aside."""
    return connection.execute(
        "SELECT count(*) FROM requests WHERE rowid > ? AND rowid <= ? AND workload_id IS NOT ?",
        (after, upto, EVALUATION_WORKLOAD),
    ).fetchone()[0]


def count_flagged(connection: sqlite3.Connection, after: int) -> int:
    """How many requests logged after row `after` carry a flag (what `flywheel run --watch` waits for)."""
    return connection.execute(
        "SELECT count(*) FROM requests r WHERE r.rowid > ? AND r.workload_id IS NOT ? "
        "AND EXISTS (SELECT 1 FROM flags WHERE request_id = r.request_id)",
        (after, EVALUATION_WORKLOAD),
    ).fetchone()[0]
