"""What callers get back for a request: its text, token ids, finish reason, logprobs and times."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class RequestMetrics:
    """time.monotonic() seconds, comparable across the caller's and the core's processes."""

    arrival_time: float = 0.0
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    finished_time: float | None = None

    @property
    def time_to_first_token(self) -> float | None:
        return None if self.first_token_time is None else self.first_token_time - self.arrival_time

    @property
    def queue_time(self) -> float | None:
        return None if self.first_scheduled_time is None else self.first_scheduled_time - self.arrival_time


@dataclass(slots=True)
class RequestOutput:
    request_id: str
    prompt_token_ids: list[int]
    token_ids: list[int] = field(default_factory=list)  # everything generated so far
    text: str = ""  # their text, stop string removed
    delta_token_ids: list[int] = field(default_factory=list)  # what this update added
    delta_text: str = ""
    finish_reason: str | None = None  # "stop", "length" or "abort"
    stop_reason: str | int | None = None  # the stop string or stop token id that ended it
    logprobs: list[dict[int, float]] = field(default_factory=list)
    # With SamplingParams.prompt_logprobs: per prompt token (the first None, as nothing predicts
    # it) its logprob and the top k, and its rank in the vocabulary (1: the likeliest).
    prompt_logprobs: list[dict[int, float] | None] | None = None
    prompt_ranks: list[int | None] | None = None
    num_cached_tokens: int = 0
    # With EngineOptions.score_sampled_tokens: the sum and minimum of every generated token's
    # logprob under the raw distribution (vLLM's cumulative_logprob, and its floor).
    cumulative_logprob: float | None = None
    min_logprob: float | None = None
    metrics: RequestMetrics = field(default_factory=RequestMetrics)

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None
