"""What a live server spends outside `EngineCore.step()`, measured from a closed-loop sweep.

A profile times `EngineCore.step()` alone. A live request also spends time on its way in (HTTP,
the chat template and tokenization, the engine client) and its tokens on their way out, and the
serving loop spends time around every step: the core process takes its inputs and sends the
step's outputs, and the API server detokenizes and streams every sampled token, on the same core
when the server is pinned to one (and a busy host takes its share of that core too). Three
figures stand for that, read from the points of a closed-loop sweep, where the steps are all
alike: at concurrency 1 one request (every step decodes it, nothing queues), at concurrency c
about c requests decoding together in most steps:

    gap(c)          = measured TPOT p50 - simulated TPOT p50 (no overheads), at every closed-loop
                      point, in one simulation of the sweep (with the way-ins below)
    k(c)            = the batch a sampled token shares its step with there in that simulation,
                      averaged over tokens (sum s^2 / sum s over steps of s): 1 at c = 1
    token overhead  = the slope of the line gap = step + token x k through the points, by
                      Theil-Sen: the median of the slopes between every two points: the part of
                      a step's extra time that grows with its outputs
    step overhead   = the median of gap - token x k: the part that does not
    arrival delay   = measured TTFT p50 - simulated TTFT p50 at c = 1 (with the step overhead
                      gap(1) alone gives)
    way in          = per request at c = 1, measured TTFT - simulated TTFT: the arrival delay's
                      spread, drawn again per simulated request (draws.py) as work on the
                      replica's core (shared_core.py); the sweep's gaps are taken with it there,
                      so the token overhead is what the way-ins' share of the core leaves
    client gaps     = per request at c = 1, the next send - the last token: the client's time
    host speed      = per request at c = 1, its TPOT over their mean, each drawn again for a window
                      as long as a decode there (host_speed.py); the sweep's gaps are taken with it,
                      the gap at c = 1 and the way-ins at the mean speed

Why medians, not the two ends of the sweep: on a shared host one point measured in a busy minute
is off the line by more than the overheads are (small behind two workers: a c = 32 point 73.6 ms
a token slower than simulated against 8.3 ms at c = 16, its repeat 1.7x faster; docs/benchmarks.md,
Plan, session 24), and a line through c = 1 and the highest point alone carried that into every
simulated point. The median of the slopes ignores up to 29% of the points.

Only the sum of the way in and the way out shows in a client's timestamps (both add to TTFT and
E2E alike), so all of it is put on the way in (the delivery delay stays 0). Each is clamped at 0:
a falling line (a negative slope) gives each point's gap to its steps (the step overhead the
median gap); a negative step overhead (the profile slower than the live server at c = 1) leaves
Theil-Sen's line through the origin, the median of gap / k, over the points with k > 1 (at c = 1
the gap is then the profile's own error, which no overhead takes back). When the median way in
comes out negative (the profile slower than the live server on the first prefill), every way in
moves up by as much: the spread is kept, the profile's error is not. Without a second level the
whole gap is a step's. They are written into profile.json (its "serving" section) so later
simulations of this machine start from them; `plan validate` marks the points they came from.
"""

from __future__ import annotations

import datetime
import json
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from tokenworks.errors import PlanError
from tokenworks.plan.step import StepLatency, StepShape

if TYPE_CHECKING:
    from tokenworks.plan.simulate import Fleet


@dataclass(frozen=True, slots=True)
class Serving:
    """A live server's time outside the engine step (seconds)."""

    arrival_delay: float = 0.0  # a request's way in (and out: see the module's docstring)
    delivery_delay: float = 0.0  # a token's way out
    step_overhead: float = 0.0  # serving-loop time per step, on the engine's core
    token_overhead: float = 0.0  # serving-loop time per sampled token, on the engine's core
    source: str = ""  # where it was measured: the results directory
    points: tuple[str, ...] = ()  # the points it was measured on
    tpot_gaps: tuple[float, ...] = ()  # measured - simulated TPOT p50 at those points (seconds)
    batches: tuple[float, ...] = ()  # k at those points: sampled tokens a step, token-weighted
    ttft_gap: float | None = None  # measured - simulated TTFT p50 at c=1, with the overheads
    created: str = ""
    # Per request at c=1 (seconds): each one's way in (measured - simulated TTFT), drawn again
    # per simulated request on the replica's core, and the client's time from an answer's last
    # token to its next send. Empty in a calibration from before they were measured.
    way_in: tuple[float, ...] = ()
    client_gaps: tuple[float, ...] = ()
    way_in_cpu: float = 0.0  # of each way in, the CPU on its replica's core (measured apart, not fitted)
    request_cpu: float = 0.0  # the engine core's CPU a request outside its steps (measured apart)
    router_cpu: float = 0.0  # a request's CPU in processes sharing the replicas' cores (measured apart)
    stream_cpu: float = 0.0  # a token's CPU in processes sharing the replicas' cores (measured apart)
    # The host's speed at c=1 (host_speed.py): each request's TPOT over their mean, and the
    # window each holds for (a request's decode there, seconds).
    host_speed: tuple[float, ...] = ()
    speed_window: float = 0.0

    def describe(self) -> str:
        return (
            f"arrival delay {self.arrival_delay * 1e3:.2f} ms, delivery delay {self.delivery_delay * 1e3:.2f} ms, "
            f"+{self.step_overhead * 1e3:.3f} ms a step, +{self.token_overhead * 1e3:.3f} ms a sampled token"
        )

    def serve(self, fleet: Fleet, draw_way_ins: bool = True) -> Fleet:
        """`fleet` (its latency the engine's steps alone) served as measured: the serving loop's
        time on every step, each request's way in (drawn from the measured ones, or the arrival
        delay when `draw_way_ins` is False: a delay given by hand), the client's gaps, the CPU
        shares and the host's speed."""
        overheads = self.step_overhead or self.token_overhead  # (the fast mode prices the engine's model alone)
        return replace(
            fleet, latency=ServingLatency(fleet.latency, self.step_overhead, self.token_overhead) if overheads
            else fleet.latency,
            arrival_delay=self.arrival_delay, delivery_delay=self.delivery_delay,
            way_in=self.way_in if draw_way_ins else (), client_gaps=self.client_gaps, way_in_cpu=self.way_in_cpu,
            request_cpu=self.request_cpu, router_cpu=self.router_cpu, stream_cpu=self.stream_cpu,
            host_speed=self.host_speed, speed_window=self.speed_window,
        )  # fmt: skip

    def as_simulated(self, draw_way_ins: bool = True) -> dict:
        """What a simulated run.json records of it (seconds)."""
        return {
            "arrival_delay_s": self.arrival_delay, "delivery_delay_s": self.delivery_delay,
            "step_overhead_s": self.step_overhead, "token_overhead_s": self.token_overhead,
            "way_in_s": list(self.way_in if draw_way_ins else ()), "client_gaps_s": list(self.client_gaps),
            "way_in_cpu_s": self.way_in_cpu, "request_cpu_s": self.request_cpu, "router_cpu_s": self.router_cpu,
            "stream_cpu_s": self.stream_cpu, "host_speed": list(self.host_speed), "speed_window_s": self.speed_window,
            "calibration": {"source": self.source, "points": list(self.points), "created": self.created}
            if self.source else None,
        }  # fmt: skip


class ServingLatency:
    """A step-latency model plus the serving loop's time per step and per sampled token."""

    def __init__(self, engine: StepLatency, step_overhead: float = 0.0, token_overhead: float = 0.0) -> None:
        self.engine, self.step_overhead, self.token_overhead = engine, step_overhead, token_overhead

    def step_seconds(self, step: StepShape) -> float:
        seconds = self.engine.step_seconds(step)
        return seconds + self.step_overhead + self.token_overhead * step.num_samples if seconds else seconds


def overheads(gaps: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """(step, token) overheads from the TPOT gaps of a sweep's closed-loop points, each (k, gap):
    Theil-Sen's line gap = step + token x k, clamped (the module's docstring)."""
    slopes = [(g2 - g1) / (k2 - k1) for i, (k1, g1) in enumerate(gaps) for k2, g2 in gaps[i + 1 :] if k2 != k1]
    token = max(0.0, statistics.median(slopes)) if slopes else 0.0
    step = statistics.median(gap - token * k for k, gap in gaps)
    if step < 0:  # no time a step: the line through the origin, over the batched points
        batched = [(k, gap) for k, gap in gaps if k > 1] or gaps
        return 0.0, max(0.0, statistics.median(gap / k for k, gap in batched))
    return step, token


def way_ins(measured_ttfts: list[float], simulated_ttfts: list[float]) -> tuple[float, ...]:
    """Each request's way in, measured - simulated TTFT, moved up together when their median is
    negative (the module's docstring), each at least 0; in the requests' order."""
    gaps = [m - s for m, s in zip(measured_ttfts, simulated_ttfts, strict=True)]
    if not gaps:
        return ()
    lift = max(0.0, -statistics.median(gaps))
    return tuple(max(0.0, gap + lift) for gap in gaps)


def client_gaps(sends: list[float], last_tokens: list[float]) -> tuple[float, ...]:
    """A closed loop at concurrency 1's client time: each send after the first less the last
    token of the answer before it (records in sending order)."""
    return tuple(max(0.0, send - last) for send, last in zip(sends[1:], last_tokens[:-1], strict=True))


def now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


_TUPLES = ("points", "tpot_gaps", "batches", "way_in", "client_gaps", "host_speed")  # lists in the JSON


def read_serving(profile: str | Path) -> Serving | None:
    """The profile's calibration, or None when it has none."""
    data = json.loads(Path(profile).read_text(encoding="utf-8"))
    section = data.get("serving")
    if not section:
        return None
    try:
        tuples = {key: tuple(section.get(key, ())) for key in _TUPLES}
        section = {key: value for key, value in section.items() if key != "batch"}  # (one k, before session 24)
        return Serving(**section | tuples)
    except TypeError as error:
        raise PlanError(f"the profile {profile} has a serving section this tokenworks cannot read ({error})") from None


def write_serving(profile: str | Path, serving: Serving) -> None:
    """Added to profile.json as its "serving" section; every other field is kept as it is."""
    path = Path(profile)
    data = json.loads(path.read_text(encoding="utf-8"))
    data["serving"] = asdict(serving)
    path.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
