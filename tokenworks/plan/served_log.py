"""What a server served, sent again: `tokenworks serve --log-db`'s request log as a simulated load.

Each request the server answered (status ok) is sent at its logged arrival time, counted from the
first one's, with the prompt ids this model's server would compute from the logged body (the chat
template rendered with the request's messages and tools, for chat; the text encoded, or the ids
as given, for completions), so the prefixes that the traffic shared are shared in the simulated
prefix caches too. It makes as many tokens as the server made for it then (completion_tokens).

A request the log cannot give again is left out, its reason counted: a failure (nothing was
served), one that made no tokens (prompt scoring), a body that was not kept, or one of several
choices or prompts (`n`, a list of prompts: the log keeps the request's total tokens, not each
sequence's). The file is only read, never written.
"""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenworks.bench.records import RequestRecord
from tokenworks.errors import PlanError
from tokenworks.model.tokenizer import TokenizerError
from tokenworks.plan.load import Send, Sender
from tokenworks.plan.prompts import SimPrompts

SQLITE_MAGIC = b"SQLite format 3\x00"


def is_served_log(path: Path) -> bool:
    """Whether `path` is an SQLite file (a request log), not a bench requests.jsonl."""
    try:
        with Path(path).open("rb") as handle:
            return handle.read(len(SQLITE_MAGIC)) == SQLITE_MAGIC
    except OSError:
        return False


@dataclass(frozen=True, slots=True)
class LoggedSend:
    due: float  # seconds after the first logged request arrived
    prompt_ids: list[int]
    output_tokens: int


def read_served_log(path: Path, prompts: SimPrompts) -> tuple[list[LoggedSend], Counter[str]]:
    """The log's replayable requests in arrival order, and how many were left out, by reason."""
    rows = _logged_requests(Path(path))
    sends: list[LoggedSend] = []
    skipped: Counter[str] = Counter()
    first = rows[0]["created"] if rows else 0.0
    for row in rows:
        prompt_ids, reason = _prompt_ids(row, prompts)
        if prompt_ids is None:
            skipped[reason] += 1
            continue
        sends.append(LoggedSend(row["created"] - first, prompt_ids, int(row["completion_tokens"])))
    if not sends:
        left_out = ", ".join(f"{count} {reason}" for reason, count in skipped.items()) or "it has no requests"
        raise PlanError(f"nothing in the request log {path} can be replayed ({left_out})")
    return sends, skipped


def _logged_requests(path: Path) -> list[sqlite3.Row]:
    """The log's requests in arrival order, read without writing to the file (a server may be
    writing it; and a file that is no request log stays as it was)."""
    if not path.is_file():
        raise PlanError(f"no request log at {path}: give the file `tokenworks serve --log-db` writes")
    try:
        connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        connection.row_factory = sqlite3.Row
        try:
            return connection.execute(
                "SELECT created, endpoint, status, completion_tokens, request_json FROM requests ORDER BY created"
            ).fetchall()
        finally:
            connection.close()
    except sqlite3.Error as error:
        raise PlanError(f"{path} is not a request log of `tokenworks serve --log-db` ({error})") from None


def _prompt_ids(row: sqlite3.Row, prompts: SimPrompts) -> tuple[list[int] | None, str]:
    """The ids the server computed for a logged request, or None and why it is left out."""
    if row["status"] != "ok":
        return None, "failed"
    if not row["completion_tokens"]:
        return None, "that made no tokens (prompt scoring)"
    try:
        body: dict[str, Any] = json.loads(row["request_json"] or "")
    except json.JSONDecodeError:
        return None, "without their body"
    if body.get("n", 1) != 1 or body.get("best_of", 1) not in (1, None):
        return None, "with several choices"
    if row["endpoint"] == "chat.completions":
        messages = [{key: value for key, value in message.items() if value is not None}
                    for message in body.get("messages") or []]  # fmt: skip
        add_generation_prompt = body.get("add_generation_prompt", True)
        try:
            text = prompts.tokenizer.apply_chat_template(messages, add_generation_prompt, body.get("tools"))
        except TokenizerError:
            return None, "whose messages this model's chat template cannot render"
        return prompts.tokenizer.encode(text), ""
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):  # one, in a list
        prompt = prompt[0]
    if isinstance(prompt, str):
        return prompts.tokenizer.encode(prompt), ""
    if isinstance(prompt, list) and prompt and all(isinstance(token, int) for token in prompt):
        return list(prompt), ""
    return None, "with several prompts"


class ServedLogLoad:
    """Sends the log's requests at their logged times (an open loop: nothing waits for answers)."""

    def __init__(self, path: Path, prompts: SimPrompts) -> None:
        self.logged, self.skipped = read_served_log(path, prompts)
        self.prompts = prompts
        self.records: list[RequestRecord] = []
        self.measured_start = 0.0
        self.sender: Sender | None = None

    def start(self, sender: Sender) -> None:
        self.sender = sender
        for logged in self.logged:
            sender.call_at(logged.due, lambda logged=logged: self._send(logged))

    def _send(self, logged: LoggedSend) -> None:
        record = RequestRecord(index=len(self.records), warmup=False, intended_send=logged.due, sent=0.0,
                               requested_output_tokens=logged.output_tokens)  # fmt: skip
        self.records.append(record)
        output_ids = self.prompts.output_ids(record.index, logged.output_tokens)
        self.sender.submit(Send(record, logged.prompt_ids, output_ids))
