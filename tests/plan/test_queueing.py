"""The simulator against answers known in closed form: M/D/1 waiting time, and a closed loop by hand."""

from __future__ import annotations

import statistics

import pytest

from tests.plan.conftest import replicas
from tokenworks.bench.loadgen import LoadOptions
from tokenworks.bench.metrics import summarize
from tokenworks.bench.workloads import WorkloadOptions, build_workload
from tokenworks.plan.clock import SimClock
from tokenworks.plan.latency import ConstantLatency
from tokenworks.plan.load import WorkloadLoad
from tokenworks.plan.simulator import Simulation


def simulate(sim_prompts, latency, load: LoadOptions, workload: WorkloadOptions, **config):
    clock = SimClock()
    simulation = Simulation(replicas(1, latency, clock, **config), clock)
    sent = WorkloadLoad(build_workload(workload, 0, sim_prompts.counter), load, sim_prompts)
    stats = simulation.run(sent)
    return sent.records, stats


def test_md1_mean_waiting_time(sim_prompts) -> None:
    """Poisson arrivals at rate lambda, one request served at a time in exactly one step of D
    seconds (a one-token answer to a prompt prefilled in one step, max_num_seqs 1): an M/D/1 queue,
    whose mean wait is rho D / (2 (1 - rho)) (Pollaczek-Khinchine)."""
    service, rate, count = 0.010, 60.0, 20_000
    rho = rate * service
    load = LoadOptions(request_rate=rate, num_requests=count, seed=1)
    workload = WorkloadOptions(kind="synthetic", api="completions", input_tokens="8", output_tokens="1")
    records, stats = simulate(sim_prompts, ConstantLatency(service), load, workload, max_num_seqs=1)
    waits = [record.first_token - record.sent - service for record in records]
    assert len(records) == count and all(record.ok and record.output_tokens == 1 for record in records)
    assert min(waits) == pytest.approx(0.0, abs=1e-12)
    expected = rho * service / (2 * (1 - rho))
    assert statistics.fmean(waits) == pytest.approx(expected, rel=0.03)
    assert stats.steps == count  # one step per request: nothing batched
    assert stats.busy_seconds == [pytest.approx(count * service)]


def test_closed_loop_by_hand(sim_prompts) -> None:
    """Concurrency 3 on a replica that runs 2 requests at a time, 2 output tokens each, every step
    0.25 s. r0 r1 prefill in [0, .25), decode in [.25, .5) and finish; r2 (waiting since 0) and r3
    (sent by r0's sender at .5) run [.5, 1); r4 (sent at .5) and r5 (sent at 1 by r2's sender) run
    [1, 1.5); the budget of 6 is spent."""
    load = LoadOptions(concurrency=3, num_requests=6)
    workload = WorkloadOptions(kind="synthetic", api="completions", input_tokens="8", output_tokens="2")
    records, stats = simulate(sim_prompts, ConstantLatency(0.25), load, workload, max_num_seqs=2)
    assert [r.sent for r in records] == [0.0, 0.0, 0.0, 0.5, 0.5, 1.0]
    assert [r.first_token for r in records] == [0.25, 0.25, 0.75, 0.75, 1.25, 1.25]
    assert [r.chunk_times for r in records] == [[0.25, 0.5]] * 2 + [[0.75, 1.0]] * 2 + [[1.25, 1.5]] * 2
    assert [r.output_tokens for r in records] == [2] * 6 and [r.input_tokens for r in records] == [8] * 6
    metrics = summarize(records)
    assert (metrics.window_start, metrics.window_end, metrics.duration) == (0.0, 1.5, 1.5)
    assert metrics.output_throughput == 12 / 1.5
    assert metrics.ttft.p50 == 0.25 and metrics.ttft.max == 0.75 and metrics.ttft.mean == 2.5 / 6
    assert metrics.tpot.p50 == 0.25 and metrics.itl.max == 0.25
    assert stats.steps == 6 and stats.end == 1.5


def test_delays_outside_the_engine_by_hand(sim_prompts) -> None:
    """One request at a time, 2 tokens each, steps of 0.25 s, 0.125 s from a send to the engine and
    0.0625 s from a step's end to the client: sent 0, in the engine at .125, its tokens at .375 and
    .625 read at .4375 and .6875, when the next is sent."""
    load = LoadOptions(concurrency=1, num_requests=2)
    workload = WorkloadOptions(kind="synthetic", api="completions", input_tokens="8", output_tokens="2")
    clock = SimClock()
    simulation = Simulation(replicas(1, ConstantLatency(0.25), clock), clock, None, 0.125, 0.0625)
    sent = WorkloadLoad(build_workload(workload, 0, sim_prompts.counter), load, sim_prompts)
    simulation.run(sent)
    assert [(r.sent, r.chunk_times) for r in sent.records] == [(0.0, [0.4375, 0.6875]), (0.6875, [1.125, 1.375])]
    assert summarize(sent.records).ttft.p50 == 0.4375
