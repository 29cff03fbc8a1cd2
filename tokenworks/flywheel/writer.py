"""The request log's writer: one thread that batches entries into SQLite commits.

The server's event loop only ever calls `put` (a `SimpleQueue.put_nowait`: no lock held for
long, no disk, and no thread woken: the writer sleeps through the interval instead of waking
for each entry, which cost the server 5% of its CPU at 200 requests a second). Every
`flush_interval` seconds, or as soon as `flush_rows` entries were put, the thread drains the
queue, turns the entries into rows and commits them. The guarantee: an entry put at time t is
committed by t + flush_interval (plus the commit itself), so a `kill -9` of the server loses
at most the requests that finished in the last flush interval; a clean shutdown (`close`)
loses none. Feedback goes through the same queue, behind the entries put before it, and wakes
the thread: it commits those entries first, so feedback for a request answered a moment ago
finds its row.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

from tokenworks.flywheel import store
from tokenworks.flywheel.entries import LoggedRequest, redacted, to_row

logger = logging.getLogger(__name__)

RETENTION_CHECK_S = 3600.0  # how often old rows are deleted, besides at start
# Rows the thread converts between letting go of the GIL (about 1.5 ms of work): the server's
# event loop waits at most that long for it, not the interpreter's 5 ms switch interval.
ROWS_PER_GIL_HOLD = 64


@dataclass(slots=True)
class _Feedback:
    request_id: str
    rating: float | None
    correction: str | None
    done: Future = field(default_factory=Future)  # the stored row, or None for an unknown request id


@dataclass(slots=True)
class _Flush:
    done: Future = field(default_factory=Future)


_STOP = object()


class LogWriter:
    def __init__(
        self, path: str | Path, flush_interval: float = 1.0, flush_rows: int = 1000,
        retention_days: float | None = None, redact_pii: bool = False,
    ) -> None:  # fmt: skip
        if flush_interval <= 0 or flush_rows < 1:
            raise ValueError("the log's flush interval must be positive and its flush rows at least 1")
        self.path, self.flush_interval, self.flush_rows = Path(path), flush_interval, flush_rows
        self.retention_days, self.redact_pii = retention_days, redact_pii
        self.rows_written = 0
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._wake = threading.Event()  # set for a command, or when flush_rows entries were put
        self._unannounced = 0  # entries put since the last wake (the caller's count, never the thread's)
        self._rows: list[tuple] = []
        self._thread = threading.Thread(target=self._run, name="request-log-writer", daemon=True)
        self._thread.start()

    # ---- the caller's side: never waits on the thread ---------------------------------------

    def put(self, entry: LoggedRequest) -> None:
        self._queue.put_nowait(entry)
        self._unannounced += 1
        if self._unannounced >= self.flush_rows:
            self._unannounced = 0
            self._wake.set()

    def feedback(self, request_id: str, rating: float | None, correction: str | None) -> Future:
        command = _Feedback(request_id, rating, correction)
        self._command(command)
        return command.done

    def flush(self) -> Future:
        """A future done once everything put before this call is committed."""
        command = _Flush()
        self._command(command)
        return command.done

    def close(self, timeout: float = 30.0) -> None:
        """Commit what is queued and stop the thread (blocks: call it off the event loop)."""
        self._command(_STOP)
        self._thread.join(timeout)

    def _command(self, command) -> None:
        self._queue.put_nowait(command)
        self._wake.set()

    # ---- the thread -------------------------------------------------------------------------

    def _run(self) -> None:
        connection = store.connect(self.path, check_same_thread=True)
        try:
            next_retention = self._apply_retention(connection)
            deadline = time.monotonic() + self.flush_interval
            stopping = False
            while not stopping:
                self._wake.wait(max(0.0, deadline - time.monotonic()))
                self._wake.clear()
                stopping = self._drain(connection)
                self._commit(connection)
                now = time.monotonic()
                if now >= deadline:
                    deadline = now + self.flush_interval
                if now >= next_retention:
                    next_retention = self._apply_retention(connection)
        finally:
            self._commit(connection)
            connection.close()

    def _drain(self, connection) -> bool:
        """Turn everything queued into rows, in order, running commands where they stand; True at stop."""
        converted = 0
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return False
            if item is _STOP:
                return True
            if isinstance(item, LoggedRequest):
                self._rows.append(to_row(item, self.redact_pii))
                converted += 1
                if converted % ROWS_PER_GIL_HOLD == 0:
                    time.sleep(0)  # let the event loop have the GIL
            else:
                self._commit(connection)
                self._run_command(connection, item)

    def _commit(self, connection) -> None:
        if not self._rows:
            return
        rows, self._rows = self._rows, []
        try:
            store.insert_requests(connection, rows)
            connection.commit()
            self.rows_written += len(rows)
        except Exception:  # a full disk, a locked file: the server goes on serving, the log says what was lost
            connection.rollback()
            logger.exception("the request log lost %d rows: writing them to %s failed", len(rows), self.path)

    def _run_command(self, connection, command) -> None:
        try:
            if isinstance(command, _Feedback):
                correction = redacted(command.correction) if self.redact_pii else command.correction
                row = store.insert_feedback(connection, command.request_id, command.rating, correction, time.time())
                connection.commit()
                command.done.set_result(row)
            else:
                command.done.set_result(None)
        except Exception as error:
            connection.rollback()
            command.done.set_exception(error)

    def _apply_retention(self, connection) -> float:
        """Delete rows older than the retention; the monotonic time of the next check."""
        if self.retention_days is not None:
            deleted = store.delete_older_than(connection, time.time() - self.retention_days * 86400)
            connection.commit()
            if deleted:
                logger.info("the request log deleted %d requests older than %g days", deleted, self.retention_days)
        return time.monotonic() + RETENTION_CHECK_S
