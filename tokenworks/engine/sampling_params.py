"""How one request is decoded: sampling, penalties, stops, lengths and logprobs.

The fields and their meanings follow OpenAI's API and vLLM's `SamplingParams`, so the
server can map a request body onto them one to one. `validate` raises ValueError with a
message naming the field, which the server turns into an HTTP 400.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MAX_LOGPROBS = 20  # top tokens per position a request may ask for (OpenAI's limit)
STRUCTURED_KINDS = ("json", "json_object", "regex", "choice", "grammar")


@dataclass(frozen=True, slots=True)
class StructuredOutput:
    """What a request's output must match (vLLM's StructuredOutputsParams, one of them):
    `json` a JSON schema (as JSON text), `json_object` any JSON object, `regex` a regular
    expression, `choice` one of the strings in `value` (a JSON list), `grammar` a Lark (or
    GBNF) grammar. grammar.py compiles it; the engine masks every step's logits by it."""

    kind: str
    value: str = ""

    def __post_init__(self) -> None:
        if self.kind not in STRUCTURED_KINDS:
            raise ValueError(f"structured output kind must be one of {', '.join(STRUCTURED_KINDS)}, got {self.kind!r}")


@dataclass(slots=True)
class SamplingParams:
    max_tokens: int | None = 16  # None: until the context is full
    min_tokens: int = 0  # stop tokens (and EOS) are suppressed until this many are generated
    temperature: float = 1.0  # 0 means greedy
    top_k: int = 0  # 0 or -1: all tokens
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0  # > 1 discourages tokens seen in the prompt or output
    presence_penalty: float = 0.0  # subtracted once from every token already generated
    frequency_penalty: float = 0.0  # subtracted per occurrence in the generated tokens
    seed: int | None = None  # a per-request generator: the same seed gives the same tokens
    stop: list[str] = field(default_factory=list)  # stop strings, checked on the detokenized text
    stop_token_ids: list[int] = field(default_factory=list)
    include_stop_str_in_output: bool = False
    ignore_eos: bool = False
    logprobs: int | None = None  # None: none; k >= 0: the sampled token's and the top k
    prompt_logprobs: int | None = None  # None: none; k >= 0: each prompt token's (after the first) and the top k
    skip_special_tokens: bool = True
    structured_output: StructuredOutput | None = None  # the output must match it (grammar.py)
    n: int = 1  # the server fans out n > 1 into n requests

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.validate()

    @property
    def greedy(self) -> bool:
        # Below 1e-5 sampling is argmax in all but name, and dividing by it overflows.
        return self.temperature < 1e-5

    @property
    def uses_penalties(self) -> bool:
        return self.repetition_penalty != 1.0 or self.presence_penalty != 0.0 or self.frequency_penalty != 0.0

    def validate(self) -> None:
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {self.max_tokens}")
        if self.min_tokens < 0 or (self.max_tokens is not None and self.min_tokens > self.max_tokens):
            raise ValueError(f"min_tokens must be between 0 and max_tokens, got {self.min_tokens}")
        if self.temperature < 0.0:
            raise ValueError(f"temperature must be non-negative, got {self.temperature}")
        if self.top_k < -1:
            raise ValueError(f"top_k must be -1, 0 (disabled) or positive, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not 0.0 <= self.min_p <= 1.0:
            raise ValueError(f"min_p must be in [0, 1], got {self.min_p}")
        if not 0.01 <= self.repetition_penalty <= 100.0:
            raise ValueError(f"repetition_penalty must be in [0.01, 100], got {self.repetition_penalty}")
        if self.seed is not None and not -(2**63) <= self.seed < 2**64:
            raise ValueError(f"seed must fit in 64 bits, got {self.seed}")
        for name in ("presence_penalty", "frequency_penalty"):
            if not -2.0 <= getattr(self, name) <= 2.0:
                raise ValueError(f"{name} must be in [-2, 2], got {getattr(self, name)}")
        for name in ("logprobs", "prompt_logprobs"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= MAX_LOGPROBS:
                raise ValueError(f"{name} must be between 0 and {MAX_LOGPROBS}, got {value}")
        if self.n < 1:
            raise ValueError(f"n must be at least 1, got {self.n}")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise ValueError("stop must hold non-empty strings")
