"""What a live server spends outside `EngineCore.step()`, measured from a closed-loop sweep.

A profile times `EngineCore.step()` alone. A live request also spends time on its way in (HTTP,
the chat template and tokenization, the engine client) and its tokens on their way out, and the
serving loop spends time around every step: the core process takes its inputs and sends the
step's outputs, and the API server detokenizes and streams every sampled token, on the same core
when the server is pinned to one (and a busy host takes its share of that core too). Three
figures stand for that, read from two points of a closed-loop sweep where the steps are all
alike: concurrency 1 (one request: every step decodes it, nothing queues) and the sweep's
highest concurrency C (C requests decoding together in most steps):

    gap(c)          = measured TPOT p50 - simulated TPOT p50 (no overheads), at c = 1 and C
    token overhead  = (gap(C) - gap(1)) / (k - 1): the part of a step's extra time that grows
                      with its outputs; k is the batch a sampled token shares its step with at C
                      in the simulation, averaged over tokens (sum s^2 / sum s over steps of s)
    step overhead   = gap(1) - token overhead: the part that does not
    arrival delay   = measured TTFT p50 - simulated TTFT p50 at c = 1 (with both overheads)
    way in          = per request at c = 1, measured TTFT - simulated TTFT: the arrival delay's
                      spread, drawn again per simulated request (draws.py) as work on the
                      replica's core (shared_core.py); the TPOT gap at C is taken with it there,
                      so the token overhead is what the way-ins' share of the core leaves
    client gaps     = per request at c = 1, the next send - the last token: the client's time

Only the sum of the way in and the way out shows in a client's timestamps (both add to TTFT and
E2E alike), so all of it is put on the way in (the delivery delay stays 0). Each is clamped at 0:
a negative token overhead gives the whole gap at 1 to the step; a negative step overhead (the
profile slower than the live server at c = 1) leaves the token overhead that fits both gaps
best, (gap(1) + k gap(C)) / (1 + k^2). When the median way in comes out negative (the profile
slower than the live server on the first prefill), every way in moves up by as much: the
spread is kept, the profile's error is not. Without a second level the whole gap is a step's. They are written into profile.json (its "serving" section) so later
simulations of this machine start from them; `plan validate` marks the points they came from.
"""

from __future__ import annotations

import datetime
import json
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path

from tokenworks.errors import PlanError
from tokenworks.plan.step import StepLatency, StepShape


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
    batch: float | None = None  # k: sampled tokens a step at the second point, token-weighted
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

    def describe(self) -> str:
        return (
            f"arrival delay {self.arrival_delay * 1e3:.2f} ms, delivery delay {self.delivery_delay * 1e3:.2f} ms, "
            f"+{self.step_overhead * 1e3:.3f} ms a step, +{self.token_overhead * 1e3:.3f} ms a sampled token"
        )


class ServingLatency:
    """A step-latency model plus the serving loop's time per step and per sampled token."""

    def __init__(self, engine: StepLatency, step_overhead: float = 0.0, token_overhead: float = 0.0) -> None:
        self.engine, self.step_overhead, self.token_overhead = engine, step_overhead, token_overhead

    def step_seconds(self, step: StepShape) -> float:
        seconds = self.engine.step_seconds(step)
        return seconds + self.step_overhead + self.token_overhead * step.num_samples if seconds else seconds


def overheads(gap_one: float, gap_many: float | None = None, samples_many: float | None = None) -> tuple[float, float]:
    """(step, token) overheads from the TPOT gaps at concurrency 1 and at a higher level whose
    steps sample `samples_many` tokens on average (the module's docstring)."""
    if gap_many is None or samples_many is None or samples_many <= 1:
        return max(0.0, gap_one), 0.0
    token = max(0.0, (gap_many - gap_one) / (samples_many - 1))
    step = gap_one - token
    if step < 0:  # no time a step: the token overhead alone, least squares over both points
        return 0.0, max(0.0, (gap_one + samples_many * gap_many) / (1 + samples_many**2))
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


def read_serving(profile: str | Path) -> Serving | None:
    """The profile's calibration, or None when it has none."""
    data = json.loads(Path(profile).read_text(encoding="utf-8"))
    section = data.get("serving")
    if not section:
        return None
    try:
        tuples = {key: tuple(section.get(key, ())) for key in ("points", "tpot_gaps", "way_in", "client_gaps")}
        return Serving(**section | tuples)
    except TypeError as error:
        raise PlanError(f"the profile {profile} has a serving section this tokenworks cannot read ({error})") from None


def write_serving(profile: str | Path, serving: Serving) -> None:
    """Added to profile.json as its "serving" section; every other field is kept as it is."""
    path = Path(profile)
    data = json.loads(path.read_text(encoding="utf-8"))
    data["serving"] = asdict(serving)
    path.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
