"""The host's speed over time (host_speed.py): factors dealt a window each, every step begun in
a window stretched by its factor, worked out by hand (binary fractions: exact)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from tests.plan.conftest import replicas
from tokenworks.bench.loadgen import LoadOptions
from tokenworks.bench.records import RequestRecord
from tokenworks.bench.workloads import WorkloadOptions, build_workload
from tokenworks.plan.clock import SimClock
from tokenworks.plan.draws import Draws
from tokenworks.plan.host_speed import HostSpeed, measured_speed, speed_factors
from tokenworks.plan.latency import ConstantLatency
from tokenworks.plan.load import WorkloadLoad
from tokenworks.plan.simulate import Fleet
from tokenworks.plan.simulator import Simulation

TWO_TOKENS = WorkloadOptions(kind="synthetic", api="completions", input_tokens="8", output_tokens="2")


def test_a_step_takes_the_factor_of_the_window_it_begins_in(sim_prompts) -> None:
    """Steps of .25 s, one client, two requests of 2 tokens; the host runs at full speed until
    .5 s and at a third of it after. r0: prefill [0, .25), decode [.25, .5). r1, sent at .5:
    prefill [.5, 1.25), decode [1.25, 2)."""
    clock = SimClock()
    (replica,) = replicas(1, ConstantLatency(0.25), clock)
    replica.speed = lambda now: 1.0 if now < 0.5 else 3.0
    sent = WorkloadLoad(build_workload(TWO_TOKENS, 0, sim_prompts.counter), LoadOptions(concurrency=1,
                        num_requests=2), sim_prompts)  # fmt: skip
    Simulation([replica], clock).run(sent)
    assert [r.chunk_times for r in sent.records] == [[0.25, 0.5], [1.25, 2.0]]


def test_windows_are_dealt_their_factors_in_order() -> None:
    """Whatever order the windows are asked for in, window k has the k-th factor dealt (so a
    simulation repeats exactly), and every two windows deal the measured pair once."""
    factors = [0.75, 1.5]
    speed, draws = HostSpeed(factors, window=0.5, seed=7), Draws(factors, seed=7)
    assert speed.factor(1.75) == speed.factor(1.5)  # window 3 first: windows 0-3 dealt
    dealt = [draws() for _ in range(4)]
    assert [speed.factor(now) for now in (0.0, 0.25, 0.5, 1.0, 1.5)] == [dealt[0], dealt[0], dealt[1], dealt[2],
                                                                         dealt[3]]  # fmt: skip
    assert sorted(dealt[:2]) == sorted(dealt[2:]) == factors
    with pytest.raises(ValueError, match="longer than 0"):
        HostSpeed(factors, window=0.0)


def test_each_replica_has_a_deck_of_its_own_and_each_fleet_seed_other_decks() -> None:
    """Fleet.build gives replica i the factors seeded 3 + i (the workers' cores are slow at
    different times), and with fleet seed s, 5s + 3 + i with two replicas (the way-ins' deck 5s + 1,
    the client gaps' 5s + 2): no two seeds share a deck."""
    factors = (0.5, 1.0, 2.0, 4.0)
    fleet = Fleet(replicas(1, ConstantLatency(0.25), SimClock())[0].config, ConstantLatency(0.25), replicas=2,
                  host_speed=factors, speed_window=0.25)  # fmt: skip
    for seed, first in ((0, 3), (1, 8)):
        built = replace(fleet, seed=seed).build()
        for deck, replica in enumerate(built.replicas, start=first):
            draws = Draws(factors, seed=deck)
            assert [replica.speed(0.25 * k) for k in range(8)] == [draws() for _ in range(8)]
    assert [r.speed for r in Fleet(fleet.replica, fleet.latency).build().replicas] == [None]
    assert fleet.draws and not Fleet(fleet.replica, fleet.latency).draws


@pytest.mark.parametrize(
    ("tpots", "expected"),
    [
        ([0.25, 0.5, 0.125, 0.125], (1.0, 2.0, 0.5, 0.5)),  # over their mean, 0.25 (not the median, 0.1875)
        ([0.5, 0.25, 0.75], (1.0, 0.5, 1.5)),
        ([], ()),
        ([0.0, 0.5], ()),  # a TPOT of 0 (every token in one chunk): no speed to read
    ],
)
def test_speed_factors_are_each_requests_tpot_over_their_mean(tpots, expected) -> None:
    assert speed_factors(tpots) == expected


def test_measured_speed_reads_the_decodes_of_c1() -> None:
    """5 tokens each: decodes of 1, 0.5 and 1.5 s (TPOT .25, .125, .375; mean .25); a warmup, a
    failed request and one whose tokens came in one chunk are left out. Window: the median decode."""

    def record(index, first, last, warmup=False, status="ok"):
        return RequestRecord(index=index, warmup=warmup, intended_send=None, sent=0.0, first_token=first,
                             last_token=last, output_tokens=5, status=status)  # fmt: skip

    records = [record(0, 1.0, 9.0, warmup=True), record(1, 1.0, 2.0), record(2, 3.0, 3.5),
               record(3, 4.0, 4.0), record(4, 5.0, 9.0, status="error"), record(5, 6.0, 7.5)]  # fmt: skip
    assert measured_speed(records) == ((1.0, 0.5, 1.5), 1.0)
    assert measured_speed([record(0, 1.0, 1.0)]) == ((), 0.0)
