"""The way in as work on the worker's core, drawn per-request times and the calibration's
per-request arithmetic, each against answers worked out by hand (binary fractions: exact)."""

from __future__ import annotations

import pytest

from tests.plan.conftest import replicas
from tokenworks.bench.loadgen import LoadOptions
from tokenworks.bench.workloads import WorkloadOptions, build_workload
from tokenworks.plan.calibrate import client_gaps, overheads, way_ins
from tokenworks.plan.clock import SimClock
from tokenworks.plan.draws import Draws
from tokenworks.plan.latency import ConstantLatency
from tokenworks.plan.load import WorkloadLoad
from tokenworks.plan.routing import SimRouter, policy_on_clock
from tokenworks.plan.shared_core import SharedCore
from tokenworks.plan.simulator import Simulation

TWO_TOKENS = WorkloadOptions(kind="synthetic", api="completions", input_tokens="8", output_tokens="2")


def run(sim_prompts, load: LoadOptions, **simulation) -> list:
    """Steps of 0.25 s, at most two requests a step, one replica."""
    clock = SimClock()
    served = Simulation(replicas(1, ConstantLatency(0.25), clock, max_num_seqs=2), clock, **simulation)
    sent = WorkloadLoad(build_workload(TWO_TOKENS, 0, sim_prompts.counter), load, sim_prompts)
    served.run(sent)
    return sent.records


def test_way_ins_queue_and_stretch_the_steps_they_fall_in() -> None:
    core = SharedCore()
    assert core.admit(0.0, 0.125) == (0.0, 0.125)
    assert core.admit(0.0625, 0.25) == (0.125, 0.375)  # after the first: one API server
    # Engine work of .25 from 0: both way-ins (.375 of the core) first.
    assert core.engine_end(0.0, 0.25) == 0.625
    # From .25: the first way-in is over, the second has .125 left.
    assert core.engine_end(0.25, 0.25) == 0.625
    assert core.engine_end(0.5, 0.25) == 0.75  # nothing left of them
    assert core.admit(1.0, 0.0) == (1.0, 1.0) and core.engine_end(1.0, 0.25) == 1.25


def test_way_in_on_the_core_by_hand(sim_prompts) -> None:
    """Concurrency 2, 3 requests of 2 tokens, way-ins of .125 s all CPU on the replica's core.
    r0's way in [0, .125), r1's after it [.125, .25); r0's prefill starts at .125 and loses the core
    to r1's way in: it ends at .5, without r1 (which came in mid-step). [.5, .75): r0's decode, r1's
    prefill. r2 is sent at .75; its way in [.75, .875) holds r1's decode back to 1.125; r2's steps
    follow. Free delays instead would have both first requests in the engine at .125, together."""
    load = LoadOptions(concurrency=2, num_requests=3)
    records = run(sim_prompts, load, arrival_delay=0.125, way_in_cpu=0.125)
    assert [r.sent for r in records] == [0.0, 0.0, 0.75]
    assert [r.chunk_times for r in records] == [[0.5, 0.75], [0.75, 1.125], [1.375, 1.625]]
    free = run(sim_prompts, load, arrival_delay=0.125)
    assert [r.chunk_times for r in free] == [[0.375, 0.625], [0.375, 0.625], [1.0, 1.25]]


def test_part_of_the_way_in_on_the_core(sim_prompts) -> None:
    """One request, a way in of .25 s of which .125 is CPU: the rest passes elsewhere after it,
    so the engine has it at .25 (the idle core loses nothing)."""
    records = run(sim_prompts, LoadOptions(concurrency=1, num_requests=1), arrival_delay=0.25, way_in_cpu=0.125)
    assert records[0].chunk_times == [0.5, 0.75]


def test_drawn_way_ins_break_the_lockstep(sim_prompts) -> None:
    """Two clients, way-ins drawn 0, .125, 0, .125 (free of the core). r1 comes in during r0's
    prefill and waits for it: prefilled with r0's decode in [.25, .5). r2 (sent at .5, in at once)
    joins r1's decode; r3 (sent at .75, in at .875) waits out r2's decode [.75, 1)."""
    draws = iter([0.0, 0.125, 0.0, 0.125])
    records = run(sim_prompts, LoadOptions(concurrency=2, num_requests=4), way_in=lambda: next(draws))
    assert [r.sent for r in records] == [0.0, 0.0, 0.5, 0.75]
    assert [r.chunk_times for r in records] == [[0.25, 0.5], [0.5, 0.75], [0.75, 1.0], [1.25, 1.5]]
    assert [r.first_token - r.sent for r in records] == [0.25, 0.5, 0.25, 0.5]
    lockstep = run(sim_prompts, LoadOptions(concurrency=2, num_requests=4))
    assert [r.first_token - r.sent for r in lockstep] == [0.25] * 4


def test_the_client_gap_delays_the_next_send(sim_prompts) -> None:
    """One client taking .0625 s between an answer's last token and its next send."""
    records = run(sim_prompts, LoadOptions(concurrency=1, num_requests=2), client_gaps=Draws([0.0625]))
    assert [r.sent for r in records] == [0.0, 0.5625]
    assert records[1].chunk_times == [0.8125, 1.0625]


def test_draws_deal_the_samples_seeded() -> None:
    samples = [0.25, 0.5, 0.75]
    first, again = Draws(samples, seed=3), Draws(samples, seed=3)
    drawn = [first() for _ in range(12)]
    assert drawn == [again() for _ in range(12)]
    for deal in range(4):  # every three calls deal the measured set once, in some order
        assert sorted(drawn[3 * deal : 3 * deal + 3]) == samples
    assert [Draws([0.125])() for _ in range(3)] == [0.125] * 3
    with pytest.raises(ValueError, match="nothing to draw"):
        Draws([])
    with pytest.raises(ValueError, match="negative"):
        Draws([0.5, -0.25])


def test_way_ins_from_the_first_point() -> None:
    measured = [0.5, 0.75, 0.625]
    assert way_ins(measured, [0.25] * 3) == (0.25, 0.5, 0.375)
    # The profile slower than the server (median -.125): all moved up by .125, then at least 0.
    assert way_ins(measured, [0.75] * 3) == (0.0, 0.125, 0.0)
    assert way_ins([], []) == ()


def test_client_gaps_from_the_first_point() -> None:
    assert client_gaps([0.0, 1.0, 2.5], [0.75, 2.0, 3.0]) == (0.25, 0.5)
    assert client_gaps([0.0, 0.5], [0.75, 1.0]) == (0.0,)  # never negative


def test_stream_cpu_is_shared_by_the_busy_replicas(sim_prompts) -> None:
    """Two replicas, round robin, one request each, steps of .25 s, .125 s of router CPU a token.
    At .25 replica 0's first token costs .0625 to each: replica 1's running step ends at .3125,
    replica 0's next step (owed) at .5625; then replica 1's token adds .0625 to each again (0's
    step to .625, 1's next to .625). At .625 replica 0 is done: its core is idle, so replica 1's
    last token costs nothing. Without the router's CPU, both answer at .25 and .5."""
    load = LoadOptions(concurrency=2, num_requests=2)

    def chunk_times(stream_cpu: float) -> list:
        clock = SimClock()
        router = SimRouter(policy_on_clock("round-robin", clock), [16, 16], clock)
        served = Simulation(replicas(2, ConstantLatency(0.25), clock), clock, router, stream_cpu=stream_cpu)
        sent = WorkloadLoad(build_workload(TWO_TOKENS, 0, sim_prompts.counter), load, sim_prompts)
        served.run(sent)
        return [r.chunk_times for r in sent.records]

    assert chunk_times(0.125) == [[0.25, 0.625], [0.3125, 0.625]]
    assert chunk_times(0.0) == [[0.25, 0.5], [0.25, 0.5]]


def test_no_overhead_from_a_negative_gap() -> None:
    """A profile slower than the live server at c=1 (a negative TPOT gap) adds nothing to a step:
    calibrate() simulates c=1 with these before the way-ins are known."""
    assert overheads([(1.0, -0.5)]) == (0.0, 0.0)
    assert overheads([(1.0, 0.25)]) == (0.25, 0.0)


def test_the_engines_own_work_on_a_request_by_hand(sim_prompts) -> None:
    """.125 s of the engine core's CPU a request outside its steps, way-ins drawn 0 and .125 (free).
    r0 comes in at 0 to an idle engine: its prefill step pays it, [0, .375). r1 comes in at .125,
    during that step, which ends .125 later, at .5. Then r0's decode and r1's prefill [.5, .75),
    r1's decode [.75, 1)."""
    draws = iter([0.0, 0.125])
    records = run(sim_prompts, LoadOptions(concurrency=2, num_requests=2), way_in=lambda: next(draws),
                  request_cpu=0.125)  # fmt: skip
    assert [r.chunk_times for r in records] == [[0.5, 0.75], [0.75, 1.0]]
    together = run(sim_prompts, LoadOptions(concurrency=2, num_requests=2), request_cpu=0.125)
    assert [r.chunk_times for r in together] == [[0.5, 0.75], [0.5, 0.75]]  # one step pays both
