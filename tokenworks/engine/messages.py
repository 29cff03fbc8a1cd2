"""The vocabulary the caller's process and the engine-core process share.

Dataclasses, pickled over a Unix socket (channel.py): the caller starts the core with
`StartEngine` and then sends requests and aborts; the core answers with `Ready` and then
each step's outputs and statistics. Only what changed in a step travels (new token ids,
not whole sequences). This module imports nothing heavy, so whoever speaks to an engine
(the HTTP process, a router) does so without loading torch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from tokenworks.engine.options import EngineOptions
from tokenworks.engine.sampling_params import SamplingParams

# ---- caller -> core ----------------------------------------------------------------------


@dataclass(slots=True)
class StartEngine:
    """The first message of a new core process: what to load and how to log."""

    options: EngineOptions
    log_level: int
    parent_pid: int  # the core exits when this process is gone


@dataclass(slots=True)
class AddRequest:
    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    priority: int = 0
    arrival_time: float | None = None
    stream: bool = True  # False: no per-step deltas, only the finished output with all its tokens
    lora: str | None = None  # the name of a loaded LoRA adapter; None: the base model


@dataclass(slots=True)
class Abort:
    request_ids: list[str]


@dataclass(slots=True)
class UtilityCall:
    call_id: int
    method: str  # a method of EngineCore listed in core_process.UTILITY_METHODS
    args: tuple = ()


@dataclass(slots=True)
class Shutdown:
    pass


# ---- core -> caller ----------------------------------------------------------------------


@dataclass(slots=True)
class Ready:
    """Sent once the model is loaded and the KV cache allocated."""

    max_model_len: int
    vocab_size: int
    eos_token_ids: list[int]
    num_kv_blocks: int
    block_size: int
    device: str
    loras: dict[str, str] = field(default_factory=dict)  # the LoRA adapters loaded at start: name -> path
    kv_events: dict | None = None  # where it publishes KV events, as bound (KVEventPublisher.describe)


@dataclass(slots=True)
class SchedulerStats:
    num_running: int
    num_waiting: int
    kv_cache_usage: float
    prefix_cache_queries: int  # prompt tokens looked up, once per request (at its first scheduling)
    prefix_cache_hits: int  # of those, tokens found in the cache
    num_preemptions: int


@dataclass(slots=True)
class StepStats:
    scheduler: SchedulerStats
    batch_size: int = 0
    num_tokens: int = 0
    step_seconds: float = 0.0
    timestamp: float = field(default_factory=time.monotonic)


@dataclass(slots=True)
class CoreOutput:
    """What one step did for one request: the tokens it added and whether it finished."""

    request_id: str
    new_token_ids: list[int]
    finish_reason: str | None = None  # "stop", "length" or "abort"
    logprobs: list[dict[int, float]] | None = None
    # Sent once, with the first output: every prompt token's logprobs (the first None) and rank.
    prompt_logprobs: list[dict[int, float] | None] | None = None
    prompt_ranks: list[int | None] | None = None
    num_prompt_tokens: int = 0
    num_cached_tokens: int = 0
    # So far, over every output token, when the engine scores sampled tokens (score_sampled_tokens).
    cumulative_logprob: float | None = None
    min_logprob: float | None = None
    arrival_time: float = 0.0
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    finished_time: float | None = None


@dataclass(slots=True)
class StepOutputs:
    outputs: list[CoreOutput]
    stats: StepStats | None = None


@dataclass(slots=True)
class RequestError:
    """The core refused a request (the caller checks first, so this is rare)."""

    request_id: str
    message: str


@dataclass(slots=True)
class UtilityResult:
    call_id: int
    result: Any = None
    error: str | None = None


@dataclass(slots=True)
class Fatal:
    """The core is about to die: why (with its traceback, for the log)."""

    message: str
    details: str = ""
