"""What the load generator records about each request: the raw data every metric derives from.

Times are seconds on the run's monotonic clock (`time.perf_counter()` minus the run's start),
so a record never depends on the wall clock; `run.json` stores the wall-clock time of the start.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

TokenSource = Literal["usage", "tokenizer", "chunks"]
Status = Literal["ok", "error"]


@dataclass(slots=True)
class RequestRecord:
    index: int  # position in the run's schedule, warmup requests included
    warmup: bool  # warmup requests are recorded but excluded from every figure
    intended_send: float | None  # the open-loop schedule's time; None in a closed loop
    sent: float  # t_send: just before the request's bytes were written
    first_token: float | None = None  # t_first: the first chunk with non-empty content
    last_token: float | None = None  # t_last: the last chunk (the whole response, without streaming)
    chunk_times: list[float] = field(default_factory=list)  # every content chunk's arrival
    chunk_tokens: list[int] = field(default_factory=list)  # tokens in each of those chunks
    input_tokens: int | None = None  # n_in
    output_tokens: int | None = None  # n_out
    token_source: TokenSource | None = None  # where n_in/n_out came from
    tokenizer_output_tokens: int | None = None  # the tokenizer's count, for the usage cross-check
    requested_output_tokens: int | None = None  # max_tokens asked for (None: the server decides)
    status: Status = "ok"
    error: str | None = None  # what went wrong, as the user should read it
    http_status: int | None = None
    session: int | None = None  # multi-turn workloads: the conversation this turn belongs to
    turn: int | None = None
    cached_tokens: int | None = None  # of n_in, found in the prefix cache (usage.prompt_tokens_details)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> RequestRecord:
        return cls(**data)
