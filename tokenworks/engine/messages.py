"""Messages between the caller's process and the engine-core process.

Dataclasses, pickled over ZMQ sockets on this machine: the caller sends requests and
aborts, the core sends back each step's outputs and statistics. Only what changed in a
step travels (new token ids, not whole sequences).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tokenworks.engine.core import CoreOutput, StepStats
from tokenworks.engine.sampling_params import SamplingParams


@dataclass(slots=True)
class AddRequest:
    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    priority: int = 0
    arrival_time: float | None = None
    stream: bool = True  # False: no per-step deltas, only the finished output with all its tokens


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


@dataclass(slots=True)
class Ready:
    """Sent once the model is loaded and the KV cache allocated."""

    max_model_len: int
    vocab_size: int
    eos_token_ids: list[int]
    num_kv_blocks: int
    block_size: int
    device: str


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
    extra: dict = field(default_factory=dict)
