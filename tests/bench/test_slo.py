"""SLO parsing (units, errors naming the bad part, round trips) and the per-request check."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tokenworks.bench.metrics import RequestMetrics
from tokenworks.bench.slo import SLO
from tokenworks.errors import BenchError


def test_parse_units_into_seconds() -> None:
    assert SLO.parse("ttft=200ms,tpot=50ms,e2e=5s") == SLO(ttft=0.2, tpot=0.05, e2e=5.0)
    assert SLO.parse(" TPOT = 1500us ") == SLO(tpot=0.0015)
    assert SLO.parse("e2e=2.5s,") == SLO(e2e=2.5)
    assert SLO.parse("ttft=.5s") == SLO(ttft=0.5)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("ttfb=200ms", "unknown SLO key 'ttfb' in 'ttfb=200ms'; use ttft, tpot or e2e"),
        ("ttft=200", "bad duration '200' in 'ttft=200': give a unit, e.g. 200ms"),
        ("ttft=200h", "bad unit 'h' in 'ttft=200h': use us, ms or s"),
        ("ttft=fast", "bad duration 'fast' in 'ttft=fast': give a number and a unit, e.g. 200ms"),
        ("ttft=-5ms", "bad duration '-5ms' in 'ttft=-5ms'"),
        ("ttft=0ms", "a bound must be above zero"),
        ("ttft 200ms", "bad SLO part 'ttft 200ms': write key=duration"),
        ("ttft=1s,ttft=2s", "SLO key 'ttft' is given twice"),
        (" , ", "empty SLO"),
    ],
)
def test_errors_name_the_bad_part(spec: str, message: str) -> None:
    with pytest.raises(BenchError) as error:
        SLO.parse(spec)
    assert message in str(error.value)


def test_str_uses_the_largest_unit_that_reads_at_least_one() -> None:
    assert str(SLO.parse("e2e=5000ms,ttft=200ms,tpot=0.5ms")) == "ttft=200ms,tpot=500us,e2e=5s"
    assert str(SLO(ttft=1.25)) == "ttft=1.25s"
    assert SLO.parse("ttft=0.117ms") == SLO.parse("ttft=117us")  # decimal arithmetic: one quantity, one float
    assert str(SLO.parse("ttft=0.117ms")) == "ttft=117us"


@given(
    st.dictionaries(
        st.sampled_from(["ttft", "tpot", "e2e"]),
        st.tuples(st.decimals(min_value="0.001", max_value="100000", places=3), st.sampled_from(["us", "ms", "s"])),
        min_size=1,
    )
)
def test_str_round_trips(bounds: dict) -> None:
    slo = SLO.parse(",".join(f"{key}={value}{unit}" for key, (value, unit) in bounds.items()))
    assert SLO.parse(str(slo)) == slo


def latencies(ok: bool = True, ttft: float | None = 0.1, tpot: float | None = 0.02, e2e: float | None = 1.0):
    return RequestMetrics(ok, 10, 5, ttft, e2e, tpot, ())


def test_is_met() -> None:
    slo = SLO.parse("ttft=100ms,tpot=20ms,e2e=1s")
    assert slo.is_met(latencies())  # bounds are inclusive
    assert not slo.is_met(latencies(ok=False))
    assert not slo.is_met(latencies(ttft=0.11))
    assert not slo.is_met(latencies(tpot=0.021))
    assert not slo.is_met(latencies(e2e=1.5))
    assert slo.is_met(latencies(tpot=None))  # fewer than two tokens: no time between tokens to exceed
    assert not slo.is_met(latencies(ttft=None))  # no content ever arrived
    assert not slo.is_met(latencies(e2e=None))
    assert SLO(e2e=1.0).is_met(latencies(ttft=None, tpot=9.0))  # only the bounds given count


def test_to_json() -> None:
    assert SLO(ttft=0.2).to_json() == {"slo_ttft_s": 0.2, "slo_tpot_s": None, "slo_e2e_s": None}


@given(st.floats(min_value=1e-9, max_value=1e6))
def test_any_bound_in_seconds_round_trips(seconds: float) -> None:
    assert SLO.parse(str(SLO(tpot=seconds))) == SLO(tpot=seconds)
