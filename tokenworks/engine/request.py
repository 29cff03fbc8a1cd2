"""A request inside the engine core: its tokens, progress, KV blocks and timestamps.

Prefill and decode are the same thing here (vLLM V1's model): a request has
`num_computed_tokens` catching up with `len(all_token_ids)`; a step schedules some of the
difference, and a step that reaches the end samples one more token.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

from tokenworks.engine.sampling_params import SamplingParams


class RequestStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED_STOPPED = "stop"
    FINISHED_LENGTH = "length"
    FINISHED_ABORTED = "abort"

    @property
    def finished(self) -> bool:
        return self in (RequestStatus.FINISHED_STOPPED, RequestStatus.FINISHED_LENGTH, RequestStatus.FINISHED_ABORTED)


@dataclass(slots=True)
class RequestTimes:
    """time.monotonic() stamps: one clock for every process on the machine."""

    arrival: float = field(default_factory=time.monotonic)
    first_scheduled: float | None = None
    first_token: float | None = None
    tokens: list[float] = field(default_factory=list)
    finished: float | None = None


class Request:
    def __init__(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        params: SamplingParams,
        eos_token_ids: frozenset[int] = frozenset(),
        priority: int = 0,
        arrival_time: float | None = None,
        cache_salt: str | None = None,
        stream: bool = True,
    ) -> None:
        self.request_id = request_id
        self.prompt_token_ids = list(prompt_token_ids)
        self.output_token_ids: list[int] = []
        self.all_token_ids: list[int] = list(prompt_token_ids)  # prompt + output, kept in step
        self.params = params
        self.eos_token_ids = eos_token_ids
        self.priority = priority  # lower runs first, as in vLLM; ties go to the earlier arrival
        self.cache_salt = cache_salt  # extra key of prefix-cache hashes (an adapter or tenant id)
        self.stream = stream  # False: the caller hears of it once, when it finishes
        self.status = RequestStatus.WAITING
        self.num_computed_tokens = 0
        self.num_cached_tokens = 0  # prompt tokens found in the prefix cache at first scheduling
        self.block_ids: list[int] = []
        self.block_hashes: list[bytes] = []  # of the full blocks of all_token_ids, computed lazily
        self.num_preemptions = 0
        self.times = RequestTimes(arrival=arrival_time if arrival_time is not None else time.monotonic())
        self.logprobs: list[dict[int, float]] = []  # per output token, when params.logprobs is set
        # Sum and minimum of the output tokens' logprobs, when the engine scores every sampled token.
        self.cumulative_logprob: float | None = None
        self.min_logprob: float | None = None
        # Per prompt token, when params.prompt_logprobs is set: the first has none (nothing
        # predicts it); each other its logprob and the top k, and its rank in the vocabulary.
        self.matcher: object | None = None  # llguidance's, following the output, with a structured_output
        self.adapter: object | None = None  # its LoRA adapter (lora.LoraAdapter), None for the base model
        self.prompt_logprobs: list[dict[int, float] | None] = []
        self.prompt_ranks: list[int | None] = []
        if params.prompt_logprobs is not None:
            self.prompt_logprobs.append(None)
            self.prompt_ranks.append(None)

    def score(self, logprob: float) -> None:
        self.cumulative_logprob = (self.cumulative_logprob or 0.0) + logprob
        self.min_logprob = logprob if self.min_logprob is None else min(self.min_logprob, logprob)

    def append_output_token(self, token_id: int) -> None:
        self.output_token_ids.append(token_id)
        self.all_token_ids.append(token_id)

    @property
    def needs_prompt_logprobs(self) -> bool:
        """Asked for prompt logprobs and still missing some (they are computed in the prefill)."""
        return self.params.prompt_logprobs is not None and len(self.prompt_logprobs) < len(self.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.all_token_ids)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def finished(self) -> bool:
        return self.status.finished

    def __repr__(self) -> str:
        return (
            f"Request({self.request_id!r}, {self.status.value}, computed {self.num_computed_tokens}/{self.num_tokens}, "
            f"blocks {self.block_ids})"
        )


def check_prompt(prompt_token_ids: list[int], params: SamplingParams, max_model_len: int, vocab_size: int) -> None:
    """ValueError naming the limit a request breaks (the server's 400), before it is queued."""
    if not prompt_token_ids:
        raise ValueError("the prompt must hold at least one token")
    if any(not isinstance(t, int) or not 0 <= t < vocab_size for t in prompt_token_ids):
        raise ValueError(f"prompt token ids must be integers in [0, {vocab_size})")
    length = len(prompt_token_ids)
    if length >= max_model_len:
        raise ValueError(f"the prompt has {length} tokens; this model's context is {max_model_len} tokens")
    if params.max_tokens is not None and length + params.max_tokens > max_model_len:
        raise ValueError(
            f"the prompt ({length} tokens) plus max_tokens ({params.max_tokens}) is {length + params.max_tokens} "
            f"tokens, more than this model's context of {max_model_len} tokens"
        )
