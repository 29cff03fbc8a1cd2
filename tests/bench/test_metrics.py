"""Metric formulas on hand-built request records, capacity search, and the validity flags.

Times are multiples of 1/8 s so every latency below is exact in binary floating point.
"""

from __future__ import annotations

import pytest

from tokenworks.bench.energy import EnergyReading
from tokenworks.bench.metrics import (
    CapacitySearch,
    Distribution,
    capacity,
    find_capacity,
    inter_token_latencies,
    request_metrics,
    summarize,
)
from tokenworks.bench.records import RequestRecord
from tokenworks.bench.slo import SLO
from tokenworks.bench.validity import Thresholds, validity_flags
from tokenworks.errors import BenchError


def streamed(index: int, sent: float, chunks: list[tuple[float, int]], n_in: int, **kw) -> RequestRecord:
    """A request whose content chunks arrived at the given (time, tokens); n_out is their sum unless given."""
    times = [t for t, _ in chunks]
    record = RequestRecord(
        index=index,
        warmup=kw.pop("warmup", False),
        intended_send=kw.pop("intended_send", None),
        sent=sent,
        first_token=times[0] if times else None,
        last_token=kw.pop("last_token", times[-1] if times else None),
        chunk_times=times,
        chunk_tokens=[k for _, k in chunks],
        input_tokens=n_in,
        output_tokens=kw.pop("n_out", sum(k for _, k in chunks)),
        token_source="usage",
    )
    for name, value in kw.items():
        setattr(record, name, value)
    return record


def run_records() -> list[RequestRecord]:
    return [
        streamed(0, 0.0, [(0.125, 1), (0.25, 1)], 10, warmup=True),  # warmup: excluded, W starts at 1.0
        # A: TTFT 0.25, E2E 1.375, TPOT 1.125/4, ITL 0.25, 0.375 x2 (a 2-token chunk), 0.125
        streamed(1, 1.0, [(1.25, 1), (1.5, 1), (2.25, 2), (2.375, 1)], 10),
        # D: TTFT 0.25, E2E 1.25, TPOT 0.5, ITL 0.5 x2
        streamed(2, 1.5, [(1.75, 1), (2.25, 1), (2.75, 1)], 8),
        streamed(3, 2.0, [(2.5, 1)], 4),  # B: one token: TTFT = E2E = 0.5, no TPOT or ITL
        streamed(4, 3.0, [], 6, last_token=3.25),  # C: no output tokens: only E2E (0.25)
        # E: broke mid-stream; its last chunk at 4.0 ends the window, its tokens count nowhere
        streamed(5, 3.5, [(3.75, 1), (4.0, 1)], 9, n_out=None, status="error", error="stream broken"),
    ]


def test_per_request_formulas() -> None:
    a, d, b, c = (request_metrics(r) for r in run_records()[1:5])
    assert (a.ttft, a.e2e, a.tpot, a.itl) == (0.25, 1.375, 0.28125, (0.25, 0.375, 0.375, 0.125))
    assert sum(a.itl) == 2.375 - 1.25  # token-weighted: the values add up to first-to-last chunk
    assert (d.ttft, d.e2e, d.tpot, d.itl) == (0.25, 1.25, 0.5, (0.5, 0.5))
    assert (b.ttft, b.e2e, b.tpot, b.itl, b.output_tokens) == (0.5, 0.5, None, (), 1)
    assert (c.ttft, c.e2e, c.tpot, c.itl, c.output_tokens) == (None, 0.25, None, (), 0)


def test_itl_skips_chunks_without_tokens_and_needs_matching_lists() -> None:
    record = streamed(0, 0.0, [(1.0, 1), (1.25, 0), (1.5, 2)], 1)
    assert inter_token_latencies(record) == (0.25, 0.25)
    record.chunk_tokens.pop()
    with pytest.raises(ValueError):
        inter_token_latencies(record)


def test_summary_of_a_run() -> None:
    m = summarize(run_records(), devices=2, device_label="GPU")
    assert (m.requests, m.completed, m.errors, m.error_rate, m.warmup) == (5, 4, 1, 0.2, 1)
    assert (m.window_start, m.window_end, m.duration) == (1.0, 4.0, 3.0)
    assert (m.input_tokens, m.output_tokens) == (28, 9)  # completed requests only
    assert m.request_throughput == 4 / 3 and m.output_throughput == 3.0 and m.total_throughput == 37 / 3
    assert (m.request_throughput_per_device, m.output_throughput_per_device) == (2 / 3, 1.5)
    assert m.total_throughput_per_device == 37 / 6 and m.device_label == "GPU"
    assert m.interactivity == 1 / ((0.28125 + 0.5) / 2)  # 1 / median(TPOT)
    assert m.median_interactivity == pytest.approx((1 / 0.28125 + 2.0) / 2)  # median(1 / TPOT)
    # no SLO: every completed request is good
    assert (m.slo, m.good_requests, m.good_output_tokens, m.slo_attainment) == (None, 4, 9, 0.8)
    assert (m.goodput_requests, m.goodput_tokens) == (4 / 3, 3.0)
    assert (m.ttft.count, m.ttft.mean, m.ttft.p50, m.ttft.min, m.ttft.max) == (3, 1 / 3, 0.25, 0.25, 0.5)
    assert (m.ttft.p90, m.ttft.p95, m.ttft.p99) == pytest.approx((0.45, 0.475, 0.495))
    assert (m.tpot.count, m.tpot.p50, m.tpot.min, m.tpot.max) == (2, 0.390625, 0.28125, 0.5)
    assert (m.itl.count, m.itl.mean, m.itl.min, m.itl.max) == (6, 2.125 / 6, 0.125, 0.5)
    assert (m.e2e.count, m.e2e.p50, m.e2e.max) == (4, 0.875, 1.375)


def test_window_ends_at_the_last_completion_when_failures_have_no_end() -> None:
    records = run_records()
    records[-1].last_token = None  # refused before any byte: no end time
    m = summarize(records)
    assert (m.window_start, m.window_end) == (1.0, 3.25)  # C's end


@pytest.mark.parametrize(
    ("spec", "good", "good_tokens"),
    [
        ("ttft=300ms", 2, 8),  # A, D; B is too slow, C has no first token
        ("tpot=400ms", 3, 6),  # A, and B and C with no TPOT to exceed; D's 0.5 s fails
        ("e2e=1.3s", 3, 4),  # B, C, D; A's 1.375 s fails
        ("ttft=300ms,tpot=600ms,e2e=1.3s", 1, 3),  # D alone meets all three
    ],
)
def test_goodput_counts_only_the_slos_given_and_never_errors(spec: str, good: int, good_tokens: int) -> None:
    m = summarize(run_records(), slo=SLO.parse(spec))
    assert m.slo == spec
    assert (m.good_requests, m.good_output_tokens) == (good, good_tokens)
    assert m.slo_attainment == good / 5  # the failed request counts in the denominator
    assert (m.goodput_requests, m.goodput_tokens) == (good / 3, good_tokens / 3)


def test_percentiles_interpolate_linearly() -> None:
    d = Distribution.of([4.0, 1.0, 3.0, 2.0])
    assert (d.count, d.mean, d.p50, d.min, d.max) == (4, 2.5, 2.5, 1.0, 4.0)
    assert (d.p90, d.p95, d.p99) == pytest.approx((3.7, 3.85, 3.97))
    assert Distribution.of([7.0]) == Distribution(1, 7.0, 7.0, 7.0, 7.0, 7.0, 7.0, 7.0)
    assert Distribution.of([]) == Distribution(count=0)


def test_an_empty_or_all_failed_run_has_no_rates() -> None:
    empty = summarize([])
    assert (empty.requests, empty.duration, empty.output_throughput, empty.slo_attainment) == (0, None, None, None)
    assert empty.ttft.count == 0 and empty.interactivity is None
    failed = summarize([RequestRecord(0, False, None, 1.0, status="error", error="connection refused")])
    assert (failed.errors, failed.error_rate, failed.slo_attainment, failed.request_throughput) == (1, 1.0, 0.0, None)
    with pytest.raises(BenchError, match="devices must be above zero"):
        summarize([], devices=0)


def test_to_json_is_flat() -> None:
    data = summarize(run_records(), slo=SLO.parse("e2e=1.3s")).to_json()
    assert data["ttft_p50_s"] == 0.25 and data["itl_count"] == 6 and data["e2e_max_s"] == 1.375
    assert data["slo"] == "e2e=1.3s" and data["output_throughput"] == 3.0
    assert all(not isinstance(v, dict | list) for v in data.values())


def test_capacity_is_the_highest_rate_before_the_first_miss() -> None:
    points = [(8.0, 0.5), (1.0, 1.0), (2.0, 0.95), (4.0, 0.9), (16.0, 0.95)]
    assert capacity(points) == 4.0  # 16 passing after 8 failed is noise
    assert capacity([(1.0, 0.89)]) is None
    assert capacity([]) is None
    assert capacity(points, target=0.99) == 1.0


def test_find_capacity_brackets_then_bisects() -> None:
    search = find_capacity(lambda rate: 1.0 if rate <= 7.3 else 0.5, low=1.0, high=4.0, tolerance=0.1, max_steps=20)
    assert [rate for rate, _ in search.points] == [1.0, 4.0, 8.0, 6.0, 7.0, 7.5, 7.25, 7.375, 7.3125]
    assert (search.capacity, search.bracketed) == (7.25, True)


def test_find_capacity_on_a_smooth_curve() -> None:
    def attainment(rate: float) -> float:
        return 1 / (1 + (rate / 10) ** 4)  # 0.9 at 10 / 9 ** 0.25 = 5.7735 requests/s

    search = find_capacity(attainment, low=0.5, high=2.0, tolerance=0.01, max_steps=30)
    assert 5.7735 - 0.01 <= search.capacity <= 5.7735
    assert search.bracketed and len(search.points) <= 30


def test_find_capacity_limits() -> None:
    search = find_capacity(lambda rate: 1.0, 1.0, 2.0, 0.1, max_steps=4)
    assert search == CapacitySearch(8.0, [(1.0, 1.0), (2.0, 1.0), (4.0, 1.0), (8.0, 1.0)], False)  # a lower bound
    assert find_capacity(lambda rate: 0.5, 1.0, 2.0, 0.1, 10) == CapacitySearch(None, [(1.0, 0.5)], True)
    with pytest.raises(BenchError, match="0 < low < high"):
        find_capacity(lambda rate: 1.0, 2.0, 1.0, 0.1, 10)
    with pytest.raises(BenchError, match="max_steps >= 2"):
        find_capacity(lambda rate: 1.0, 1.0, 2.0, 0.1, 1)


# validity flags ---------------------------------------------------------------------------------


def clean_run(n: int = 20) -> list[RequestRecord]:
    """An open-loop run at 10 requests/s, 1 ms late, each asking for and getting 4 tokens in 0.125 s chunks."""
    records = []
    for i in range(n):
        t = i / 10
        record = streamed(i, t + 0.001, [(t + 0.25 + 0.125 * k, 1) for k in range(4)], 16, intended_send=t)
        record.requested_output_tokens = record.tokenizer_output_tokens = 4
        records.append(record)
    return records


def flags_of(records: list[RequestRecord], energy: EnergyReading | None = None) -> dict[str, str]:
    return {flag.code: flag.severity for flag in validity_flags(records, summarize(records), energy)}


def test_a_clean_run_has_no_flags() -> None:
    assert flags_of(clean_run()) == {}


def test_output_length_mismatch() -> None:
    records = clean_run()
    records[3].output_tokens = 3
    [flag] = validity_flags(records, summarize(records))
    assert flag.code == "output_length_mismatch"
    assert "1 of 20 requests" in flag.message and "request 3: asked 4, received 3" in flag.message


def test_usage_and_tokenizer_disagreement() -> None:
    records = clean_run()
    for record in records[:1]:
        record.tokenizer_output_tokens = 5  # 1 token in 80: 1.25%, within 2%
    assert flags_of(records) == {}
    for record in records[:4]:
        record.tokenizer_output_tokens = 5  # 4 in 80: 5%
    assert flags_of(records) == {"usage_tokenizer_mismatch": "warning"}


def test_schedule_lag() -> None:
    records = clean_run()
    for record in records:
        record.sent = record.intended_send + 0.02  # 20 ms late against max(10 ms, 5% of 100 ms)
    assert flags_of(records) == {"schedule_lag": "warning"}
    loose = Thresholds(lag_seconds=0.05)
    assert validity_flags(records, summarize(records), thresholds=loose) == []


@pytest.mark.parametrize(("failed", "severity"), [(1, "warning"), (2, "error")])  # 5% is allowed, 10% is not
def test_errors(failed: int, severity: str) -> None:
    records = clean_run()
    for record in records[:failed]:
        record.status, record.error = "error", "HTTP 500: engine overloaded"
    [flag] = validity_flags(records, summarize(records))
    assert (flag.code, flag.severity) == ("errors", severity)
    assert f"{failed} of 20 requests failed" in flag.message and f"({failed}x): HTTP 500" in flag.message


def test_saturation_when_the_second_half_waits_much_longer() -> None:
    records = clean_run()
    for record in records[10:]:
        shift = 0.5  # first token 0.75 s after sending instead of 0.25 s
        record.chunk_times = [t + shift for t in record.chunk_times]
        record.first_token, record.last_token = record.chunk_times[0], record.chunk_times[-1]
    assert flags_of(records) == {"saturation": "warning"}


def test_energy_flags() -> None:
    reading = EnergyReading(10.0, 5.0, "rapl", "measured", 1, 20, 0.25, 0.1, 0.0, 2.0)
    assert flags_of(clean_run(), reading) == {}
    gappy = EnergyReading(10.0, 5.0, "rapl", "measured", 1, 20, 0.35, 0.1, 0.0, 2.0)  # > 3 periods
    assert flags_of(clean_run(), gappy) == {"energy_gaps": "warning"}
    estimated = EnergyReading(10.0, 5.0, "estimated", "estimated", 1, 20, 0.1, 0.1, 0.0, 2.0)
    assert flags_of(clean_run(), estimated) == {"energy_estimated": "warning"}
