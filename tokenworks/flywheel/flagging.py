"""`tokenworks flywheel flag`: the rules applied to every request not yet looked at, into `flags`.

A request is looked at once after it is logged, and again after new feedback (store.py clears
its mark then); its flags are replaced each time, so the table holds each rule's latest verdict.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from tokenworks.flywheel import store
from tokenworks.flywheel.flags import Flag, FlagConfig, flags_of, teacher_disagreement
from tokenworks.flywheel.teacher import Teacher

BATCH = 200  # requests flagged per commit: a long run keeps what it has done


def flag_requests(
    db: str | Path, config: FlagConfig, teacher: Teacher | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[int, Counter]:  # fmt: skip
    """Flag the log's unflagged requests: how many were looked at, and the flags written per rule."""
    connection = store.connect_existing(db)
    try:
        rows = store.unflagged_requests(connection)
        counts: Counter = Counter()
        for start in range(0, len(rows), BATCH):
            batch = rows[start : start + BATCH]
            flags = [flag for row in batch for flag in _flags(row, config, teacher)]
            store.write_flags(
                connection, [row["request_id"] for row in batch], [f.as_row() for f in flags], time.time()
            )
            connection.commit()
            counts.update(flag.rule for flag in flags)
            if progress is not None:
                progress(min(start + BATCH, len(rows)), len(rows))
        return len(rows), counts
    finally:
        connection.close()


def _flags(row: dict, config: FlagConfig, teacher: Teacher | None) -> list[Flag]:
    flags = flags_of(row, config)
    if teacher is not None and row["status"] == "ok":
        answer = teacher.answer(row["endpoint"], json.loads(row["request_json"]))
        if answer is not None:
            disagreement = teacher_disagreement(row, answer, config)
            flags += [disagreement] if disagreement is not None else []
    return flags
