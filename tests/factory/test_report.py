"""The factory's report page and console summary, from hand-built stage summaries."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tokenworks.factory.config import FactoryConfig
from tokenworks.factory.report import console_summary, summary_rows, write_report

HOSTILE = "<script>alert(1)</script>"


def bench_point(concurrency: int, throughput: float, interactivity: float) -> dict[str, Any]:
    return {
        "label": f"in=64,out=32 c={concurrency}", "concurrency": concurrency, "request_rate": None,
        "output_throughput_per_device": throughput, "interactivity": interactivity, "ttft_p50_ms": 12.5,
        "itl_p50_ms": None, "goodput_tokens_per_s": throughput / 2, "attainment": 0.5,
        "cost_per_million_output": 1.25, "tokens_per_joule": 0.75, "errors": 0,
    }  # fmt: skip


def summaries(workdir: Path) -> dict[str, dict[str, Any]]:
    loss_plot = workdir / "loss.png"
    loss_plot.write_bytes(b"\x89PNG not really")
    points = [bench_point(1, 10.0, 8.0), bench_point(4, 20.0, 4.0), bench_point(16, 15.0, 1.0)]
    return {
        "ingest": {
            "documents_read": 300, "documents_kept": 250, "dropped": {"quality": 40, "exact_dedup": 10},
            "tokens": {"train": 90_000, "validation": 5_000}, "vocab_size": 2048,
            "artifacts": {"data": str(workdir / "data")}, "seconds": 4.0,
        },
        "train": {
            "preset": "nano", "parameters": 1_234_567, "steps": 100, "tokens_seen": 102_400, "tokens_per_s": 2048.0,
            "final": {"train_loss": 3.5, "val_loss": 3.75, "val_perplexity": 42.5},
            "artifacts": {"loss_plot": str(loss_plot)}, "seconds": 45.0,
        },
        "serve": {
            "model": "factory-model", "url": "http://127.0.0.1:8000", "startup_seconds": 2.5,
            "smoke_prompt": f"The {HOSTILE}", "smoke_completion": " language", "seconds": 3.0,
        },
        "bench": {
            "points": points, "frontier": points[:2], "slo": "ttft=1s", "device_label": "host",
            "price": {"hardware": "CPU host", "usd_per_hour": 0.5, "book": f"book {HOSTILE} (2025-01-01)",
                      "source": "a guess"},
            "energy": {"label": "estimated", "source": "estimated"},
            "charts": {f"chart {HOSTILE}": str(loss_plot)}, "artifacts": {"results": str(workdir / "bench")},
            "seconds": 30.0,
        },
    }  # fmt: skip


def test_the_page_holds_every_section_and_embeds_the_charts(tmp_path: Path) -> None:
    config = FactoryConfig.quick(workdir=tmp_path)
    page = write_report(config, summaries(tmp_path)).read_text(encoding="utf-8")
    for heading in ("What the factory made", "Charts", "Sweep", "Where every artifact lies", "Time per stage"):
        assert f"<h2>{heading}</h2>" in page
    assert page.count("data:image/png;base64,") == 2  # the loss plot, and the bench chart pointing at it
    assert page.count("<tr class='frontier'>") == 2  # concurrency 1 and 4
    assert "<th>peak throughput</th><td>20.0 output tokens/s per host at concurrency 4" in page
    assert "<td>-</td>" in page  # the ITL no point measured
    assert "<th>ingest</th><td>4.0 s</td>" in page and "<th>bench: results</th>" in page


def test_user_text_is_escaped(tmp_path: Path) -> None:
    page = write_report(FactoryConfig.quick(workdir=tmp_path), summaries(tmp_path)).read_text(encoding="utf-8")
    assert "<script>" not in page
    # the served sample, the price book in the summary and under the sweep, the chart's alt text and caption
    assert page.count("&lt;script&gt;alert(1)&lt;/script&gt;") == 5


def test_the_console_summary_has_the_same_rows(tmp_path: Path) -> None:
    rows = summary_rows(summaries(tmp_path))
    table = console_summary(FactoryConfig.quick(workdir=tmp_path), summaries(tmp_path), {"ingest": 4.0})
    assert [label for label, _ in rows][:4] == ["documents", "dropped", "tokens", "tokenizer"]
    assert table.row_count == len(rows) + 2  # and the time and the report's path


def with_routing(workdir: Path) -> dict[str, dict[str, Any]]:
    """The summaries of a line whose serve stage ran a fleet and whose bench stage compared policies."""
    made = summaries(workdir)
    made["serve"] |= {
        "workers": 2, "router_policy": "kv", "dashboard": "http://127.0.0.1:8000/dashboard",
        "fleet": [{"id": "w0", "url": "http://127.0.0.1:8001", "healthy": True, "served": 1, "in_flight": 0},
                  {"id": "w1", "url": "http://127.0.0.1:8002", "healthy": True, "served": 0, "in_flight": 0}],
    }  # fmt: skip

    def worker(worker_id: str, served: int, cached: int, decisions: dict[str, int]) -> dict[str, Any]:
        return {
            "id": worker_id, "url": f"http://127.0.0.1:900{worker_id[1]}", "served": served,
            "prompt_tokens": served * 100, "cached_tokens": cached, "hit_rate": cached / (served * 100),
            "decisions": decisions,
        }  # fmt: skip

    def run(policy: str, ttft: float, workers: list[dict[str, Any]]) -> dict[str, Any]:
        cached = sum(w["cached_tokens"] for w in workers)
        return {
            "policy": policy, "requests": 16, "completed": 16, "errors": 0, "ttft_p50_ms": ttft,
            "ttft_p99_ms": ttft * 4, "tpot_p50_ms": 1.25, "output_tokens_per_s": 900.0, "prompt_tokens": 1600,
            "cached_tokens": cached, "hit_rate": cached / 1600, "workers": workers,
        }  # fmt: skip

    made["bench"] |= {
        "sweep_fleet": [{"id": "w0", "served": 40}, {"id": "w1", "served": 31}],
        "shared_prefix": {
            "settings": {"num_prefixes": 4, "questions_per_prefix": 4, "prefix_tokens": 256, "question_tokens": "16",
                         "output_tokens": "16", "concurrency": 4, "seed": 0, "workers": 2},
            "requests": 16, "skipped": None,
            "policies": {
                "kv": run("kv", 20.0, [worker("w0", 9, 700, {"prefix-hit": 7, "no-prefix-hit": 2}),
                                       worker("w1", 7, 500, {"prefix-hit": 5, "load": 2})]),
                "round-robin": run("round-robin", 30.0, [worker("w0", 8, 400, {"turn": 8}),
                                                         worker("w1", 8, 400, {"turn": 8})]),
            },
        },
    }  # fmt: skip
    return made


def test_the_routing_comparison_is_a_table_per_policy_and_per_worker(tmp_path: Path) -> None:
    page = write_report(FactoryConfig.quick(workdir=tmp_path), with_routing(tmp_path)).read_text(encoding="utf-8")
    assert "<h2>Routing: shared prefixes</h2>" in page
    assert "4 system prompts of 256 tokens x 4 questions of 16 tokens each (16 requests" in page
    row = "<td>kv</td><td>16 of 16</td><td>75.0%</td><td>20.0 ms</td><td>80.0 ms</td><td>1.2 ms</td><td>900.0</td>"
    assert row + "<td>w0 9, w1 7</td>" in page
    assert "<td>round-robin</td><td>16 of 16</td><td>50.0%</td><td>30.0 ms</td>" in page
    assert "<td>kv</td><td>w1</td><td>7</td><td>700</td><td>500</td><td>71.4%</td><td>load 2, prefix-hit 5</td>" in page
    assert page.count("<td>round-robin</td><td>w") == 2


def test_the_summary_names_the_workers_and_each_policys_figures(tmp_path: Path) -> None:
    rows = dict(summary_rows(with_routing(tmp_path)))
    assert rows["workers"] == "2 behind the router (kv): w0 http://127.0.0.1:8001, w1 http://127.0.0.1:8002"
    assert rows["dashboard"] == "http://127.0.0.1:8000/dashboard"
    assert rows["sweep per worker"] == "w0 40, w1 31"
    assert rows["shared prefix, kv"] == "hit rate 75.0%, TTFT p50 20.0 ms, p99 80.0 ms; requests per worker: w0 9, w1 7"
    assert rows["shared prefix, round-robin"].startswith("hit rate 50.0%, TTFT p50 30.0 ms")


def test_a_line_of_one_worker_says_why_nothing_was_compared(tmp_path: Path) -> None:
    made = summaries(tmp_path)
    made["bench"]["shared_prefix"] = {"settings": {}, "requests": 16, "policies": {}, "skipped": "one worker"}
    page = write_report(FactoryConfig.quick(workdir=tmp_path), made).read_text(encoding="utf-8")
    assert "Routing: shared prefixes" not in page and "<th>shared prefix</th><td>not compared: one worker</td>" in page
    assert "workers" not in dict(summary_rows(made))
