"""The demonstration's users: a share of the logged answers gets its reference back as a correction.

As a user would, through `POST /v1/feedback` on the serving endpoint, with the id of the answer
they were given. Which answers is a seeded choice over the log's rows whose prompt has a
reference (the docs-QA workload's), so a run corrects the same share the same way.
"""

from __future__ import annotations

import json
import random
import urllib.request
from pathlib import Path

from tokenworks.flywheel import store
from tokenworks.flywheel.dataset import normalize_prompt
from tokenworks.flywheel.labels import prompt_of, read_references


def send_corrections(
    url: str, log_db: Path, references: list[Path], share: float, seed: int = 0, after_row: int = 0,
    api_key: str | None = None,
) -> int:  # fmt: skip
    """Correct `share` of the logged answers after row `after_row` that have a reference; how many were sent."""
    answers = read_references(references)
    connection = store.connect_existing(log_db)
    try:
        rows = connection.execute(
            "SELECT request_id, endpoint, request_json FROM requests WHERE rowid > ? AND status = 'ok' ORDER BY rowid",
            (after_row,),
        ).fetchall()
    finally:
        connection.close()
    candidates = []
    for row in map(dict, rows):
        prompt = prompt_of(row)
        if prompt is not None and normalize_prompt(prompt) in answers:
            candidates.append((row["request_id"], answers[normalize_prompt(prompt)]))
    chosen = random.Random(seed).sample(candidates, round(len(candidates) * share))
    headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {api_key}"} if api_key else {})
    for request_id, reference in chosen:
        body = json.dumps({"request_id": request_id, "correction": reference}).encode()
        request = urllib.request.Request(url.rstrip("/") + "/v1/feedback", body, headers, method="POST")
        with urllib.request.urlopen(request, timeout=30) as response:
            response.read()
    return len(chosen)
