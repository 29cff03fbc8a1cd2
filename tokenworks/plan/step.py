"""One engine step as the latency models see it, and what a latency model is.

The simulator asks the engine's own scheduler for each step (`Scheduler.schedule()`), turns its
output into a `StepShape` and asks a `StepLatency` how long that step takes; the models (fitted
to a profile of this machine, or from a GPU's datasheet) answer from the shape alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from tokenworks.engine.scheduler import SchedulerOutput


@dataclass(frozen=True, slots=True)
class StepShape:
    """Per scheduled request: (tokens computed this step, tokens of context before them). A
    decode is (1, context); a prefill chunk (its length, the tokens already computed or cached)."""

    chunks: tuple[tuple[int, int], ...]
    # How many chunks reach the end of their request's tokens and so sample (their last row goes
    # through the LM head): every decode, and a prefill chunk that ends its prompt. None when not
    # known: every chunk is taken to sample. Not part of equality, so a shape written by hand
    # equals the scheduler's.
    samples: int | None = field(default=None, compare=False)

    @classmethod
    def of(cls, output: SchedulerOutput) -> StepShape:
        chunks = output.chunks
        return cls(tuple((chunk.num_tokens, chunk.start) for chunk in chunks), sum(chunk.samples for chunk in chunks))

    @property
    def num_samples(self) -> int:
        """Rows that go through the LM head this step."""
        return len(self.chunks) if self.samples is None else self.samples

    @property
    def num_tokens(self) -> int:
        return sum(tokens for tokens, _ in self.chunks)

    @property
    def decodes(self) -> tuple[int, ...]:
        """The context of each request decoding one token."""
        return tuple(context for tokens, context in self.chunks if tokens == 1)

    @property
    def prefills(self) -> tuple[tuple[int, int], ...]:
        """(tokens, context) of each prefill chunk."""
        return tuple(chunk for chunk in self.chunks if chunk[0] > 1)


class StepLatency(Protocol):
    """How long an engine step of this shape takes, in seconds."""

    def step_seconds(self, step: StepShape) -> float: ...
