"""One CPU core that a replica's API server and its engine core take turns on.

A worker is served pinned to one core: its API server (HTTP, the chat template, tokenization,
the hop to the engine core) and its engine core process share it. A request's way in is CPU
work on that core, not a free delay: while the API server parses and tokenizes, the engine's
step does not advance. The API server is one event loop, so way-ins run one after another (a
FIFO). And they run first: the API server sleeps between requests, and Linux's scheduler places
a task that wakes from sleep ahead of one that has been running (the sleeper's credit, half the
scheduling latency, several milliseconds: more than a way-in), so the way-in preempts the step in
progress. The live records show it: at concurrency 8 and 16, requests sent together get their
first token together, a way-in's time apart for each request in the group, which is what a step
held back until every way-in of the group is done gives.

Engine time and way-in time are both in core-seconds; this class turns them into the moments
they end.
"""

from __future__ import annotations

from collections import deque


class SharedCore:
    def __init__(self) -> None:
        self._front: deque[tuple[float, float]] = deque()  # the way-ins' (start, end), in order
        self.front_free = 0.0  # when the API server has done all the work it was given

    def admit(self, now: float, seconds: float) -> tuple[float, float]:
        """A way-in of `seconds` given to the API server now: when it starts (after the way-ins
        before it) and ends (the request then reaches the engine)."""
        start = max(now, self.front_free)
        end = start + seconds
        self.front_free = end
        if seconds > 0:
            self._front.append((start, end))
        return start, end

    def engine_end(self, start: float, seconds: float) -> float:
        """When engine work of `seconds` begun at `start` ends, the way-ins inside it first."""
        front = self._front
        while front and front[0][1] <= start:  # done before this step: no later step meets it
            front.popleft()
        end = start + seconds
        for begin, finish in front:
            if begin >= end:
                break
            end += finish - max(begin, start)
        return end
