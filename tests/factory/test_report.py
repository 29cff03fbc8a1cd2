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
