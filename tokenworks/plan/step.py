"""One engine step as the latency models see it, and what a latency model is.

The simulator asks the engine's own scheduler for each step (`Scheduler.schedule()`), turns its
output into a `StepShape` and asks a `StepLatency` how long that step takes; the models (fitted
to a profile of this machine, or from a GPU's datasheet) answer from the shape alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from tokenworks.engine.scheduler import SchedulerOutput


@dataclass(frozen=True, slots=True)
class StepShape:
    """Per scheduled request: (tokens computed this step, tokens of context before them). A
    decode is (1, context); a prefill chunk (its length, the tokens already computed or cached)."""

    chunks: tuple[tuple[int, int], ...]

    @classmethod
    def of(cls, output: SchedulerOutput) -> StepShape:
        return cls(tuple((chunk.num_tokens, chunk.start) for chunk in output.chunks))

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
