"""The results directory of a sweep, written from hand-built points: files, frontier, and a page that escapes."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from tokenworks.bench.client import EndpointInfo
from tokenworks.bench.economics import PriceBook, token_cost
from tokenworks.bench.energy import EnergyReading, energy_efficiency
from tokenworks.bench.loadgen import LoadOptions
from tokenworks.bench.metrics import summarize
from tokenworks.bench.records import RequestRecord
from tokenworks.bench.report import write_results
from tokenworks.bench.runner import Accounting, PointResult
from tokenworks.bench.slo import SLO
from tokenworks.bench.sweep import SweepResult
from tokenworks.bench.validity import Flag
from tokenworks.bench.workloads import WorkloadOptions

HOSTILE = "<script>alert(1)</script>"
SLO_TEXT = "ttft=1s,tpot=100ms"
RESULT_FILES = {
    "run.json", "requests.jsonl", "points.csv", "frontier.csv", "report.html",
    "throughput.png", "cost.png", "energy.png", "latency.png",
}  # fmt: skip


def measured_point(concurrency: int, step: float, workload: WorkloadOptions, flags: list[Flag]) -> PointResult:
    """Eight requests of 4 tokens each, `concurrency` at a time, a token every `step` s (times exact in binary)."""
    records = []
    for index in range(8):
        sent = (index // concurrency) * (0.25 + 4 * step)
        times = [sent + 0.25 + k * step for k in range(4)]
        records.append(
            RequestRecord(index=index, warmup=False, intended_send=None, sent=sent, first_token=times[0],
                          last_token=times[-1], chunk_times=times, chunk_tokens=[1] * 4, input_tokens=16,
                          output_tokens=4, token_source="usage")
        )  # fmt: skip
    metrics = summarize(records, SLO.parse(SLO_TEXT))
    energy = EnergyReading(
        joules=10.0 * concurrency, mean_watts=5.0, source="estimated", label="estimated", devices=1, samples=10,
        max_gap_seconds=0.125, interval=0.125, window_start=0.0, window_end=metrics.window_end,
    )  # fmt: skip
    return PointResult(
        label=f"in=16,out=4 c={concurrency}",
        workload=workload,
        load=LoadOptions(concurrency=concurrency, num_requests=8),
        metrics=metrics,
        cost=token_cost(PriceBook.load(), "CPU host", metrics),
        energy=energy,
        efficiency=energy_efficiency(energy, metrics, 65.0),
        flags=flags,
        records=records,
    )


def write_sweep(out: Path, model: str) -> None:
    workload = WorkloadOptions(kind="synthetic", api="completions", input_tokens="16", output_tokens="4")
    flags = [Flag("odd", "warning", f"a message with {HOSTILE}")]
    # 1 and 2 trade tokens/s per user for throughput; 4 is saturated, worse than 2 on both.
    points = [measured_point(c, step, workload, flags if c == 4 else []) for c, step in ((1, 0.125), (2, 0.25), (4, 1))]
    endpoint = EndpointInfo("http://127.0.0.1:9", model, [model], f"server {HOSTILE}", 256)
    result = SweepResult(endpoint, points, {"in=16,out=4": f"saturated {HOSTILE}"})
    write_results(out, result, workload, LoadOptions(), SLO.parse(SLO_TEXT), Accounting(), command="test")


def test_every_file_is_written_with_the_frontier_marked(tmp_path: Path) -> None:
    write_sweep(tmp_path, "tiny")
    assert {p.name for p in tmp_path.iterdir()} == RESULT_FILES
    with (tmp_path / "points.csv").open(encoding="utf-8") as file:
        points = list(csv.DictReader(file))
    assert [p["concurrency"] for p in points] == ["1", "2", "4"]
    assert [p["workload"] for p in points] == ["in=16,out=4"] * 3
    with (tmp_path / "frontier.csv").open(encoding="utf-8") as file:
        frontier = list(csv.DictReader(file))
    # tokens/s per user 8, 4 and 1; output tokens/s 32/5.875, 32/4.75 and 32/7.5: c=4 is beaten by c=2.
    assert [(row["label"], float(row["interactivity"])) for row in frontier] == [
        ("in=16,out=4 c=2", 4.0),
        ("in=16,out=4 c=1", 8.0),
    ]
    assert float(frontier[0]["output_throughput_per_device"]) == 32 / 4.75
    run = json.loads((tmp_path / "run.json").read_text(encoding="utf-8"))
    assert run["frontiers"]["throughput"] == ["in=16,out=4 c=2", "in=16,out=4 c=1"] and run["slo"] == SLO_TEXT
    assert len((tmp_path / "requests.jsonl").read_text(encoding="utf-8").splitlines()) == 24
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert page.count("data:image/png;base64,") == 4 and page.count("<tr class=frontier>") == 2
    assert "<title>tokenworks bench: tiny</title>" in page and "estimated" in page


def test_user_text_is_escaped_in_the_page(tmp_path: Path) -> None:
    write_sweep(tmp_path, f"model {HOSTILE}")
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "<script>" not in page
    # the title, the heading, the model and server settings, the reason the sweep stopped, the flag
    assert page.count("&lt;script&gt;alert(1)&lt;/script&gt;") == 6
