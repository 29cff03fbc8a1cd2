"""The results directory of a benchmark, written once the points are measured.

    run.json        every parameter, the tool's version, endpoint, model, host, price book, figures
    requests.jsonl  every request record (warmup ones flagged), with the point it belongs to
    points.csv      one row per point: what was asked, then every figure
    frontier.csv    the points on the throughput-interactivity Pareto frontier
    *.png           frontier, cost, energy and latency charts
    report.html     one self-contained page of all of it (templates/report.html.j2, charts embedded)

`tokenworks serve --bench-results DIR` shows DIR/frontier.csv on its live dashboard, so the
first five columns of frontier.csv are a contract: label, concurrency, request_rate,
interactivity, output_throughput_per_device.
"""

from __future__ import annotations

import base64
import csv
import datetime
import json
from collections.abc import Iterable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import jinja2
import matplotlib

matplotlib.use("Agg")  # files only: no display on a server
import matplotlib.pyplot as plt

from tokenworks import __version__
from tokenworks.bench.loadgen import LoadOptions
from tokenworks.bench.pareto import FRONTIERS, X_AXIS, frontiers, pair_label
from tokenworks.bench.runner import Accounting, host_description
from tokenworks.bench.slo import SLO
from tokenworks.bench.sweep import SweepResult
from tokenworks.bench.workloads import WorkloadOptions

FRONTIER_COLUMNS = ["label", "concurrency", "request_rate", X_AXIS, "output_throughput_per_device"]
CHART_TITLES = {
    "throughput": "Output tokens/s per {device} against tokens/s per user",
    "cost": "$ per million output tokens against tokens/s per user",
    "energy": "Output tokens per joule ({energy}) against tokens/s per user",
}
CHART_NAMES = {
    "throughput": "Pareto frontier: throughput per device",
    "cost": "Cost frontier",
    "energy": "Energy frontier",
    "latency": "TTFT and inter-token latency",
}
Y_LABELS = {
    "throughput": "output tokens/s per {device}",
    "cost": "$ per million output tokens",
    "energy": "output tokens per joule ({energy})",
}


@dataclass(slots=True)
class ResultFiles:
    out: Path
    rows: list[dict[str, Any]]
    frontiers: dict[str, list[dict[str, Any]]]
    charts: dict[str, Path]
    run: dict[str, Any]

    def summary(self) -> dict[str, Any]:
        """What the factory report shows of a sweep: the points, the frontier, prices and energy."""
        first = self.rows[0]
        return {
            "points": [_summary_point(row) for row in self.rows],
            "frontier": [_summary_point(row) for row in self.frontiers["throughput"]],
            "slo": self.run["slo"] or "none",
            "device_label": first["device_label"],
            "price": {
                "hardware": first["cost_hardware"],
                "usd_per_hour": first["cost_usd_per_device_hour"],
                "book": f"{first['cost_book']} ({first['cost_book_date']})",
                "source": first["cost_source"],
            },
            "energy": {"label": first["energy_label"], "source": first["energy_source"]},
            "saturated": self.run["saturated"],
            "charts": {CHART_NAMES[name]: str(path) for name, path in self.charts.items()},
            "artifacts": {"results": str(self.out), "report": str(self.out / "report.html")},
        }


def _summary_point(row: dict[str, Any]) -> dict[str, Any]:
    def ms(value: float | None) -> float | None:
        return None if value is None else value * 1000

    return {
        "label": row["label"],
        "concurrency": row["concurrency"],
        "request_rate": row["request_rate"],
        "output_throughput_per_device": row["output_throughput_per_device"] or 0.0,
        "interactivity": row[X_AXIS] or 0.0,
        "ttft_p50_ms": ms(row["ttft_p50_s"]),
        "itl_p50_ms": ms(row["itl_p50_s"]),
        "goodput_tokens_per_s": row["goodput_tokens"] or 0.0,
        "attainment": row["slo_attainment"] or 0.0,
        "cost_per_million_output": row["cost_usd_per_million_output_tokens"],
        "tokens_per_joule": row["energy_output_tokens_per_joule"],
        "errors": row["errors"],
    }


def write_results(
    out: Path,
    result: SweepResult,
    workload: WorkloadOptions,
    load: LoadOptions,
    slo: SLO | None,
    accounting: Accounting,
    command: str,
    extra: dict[str, Any] | None = None,
    title: str | None = None,
) -> ResultFiles:
    """`title` heads report.html (default: tokenworks bench and the model; `tokenworks plan
    simulate` says its figures are simulated)."""
    out.mkdir(parents=True, exist_ok=True)
    rows = [
        {"workload": pair_label(str(p.workload.input_tokens), str(p.workload.output_tokens))} | p.row()
        for p in result.points
    ]
    fronts = frontiers(rows)
    with (out / "requests.jsonl").open("w", encoding="utf-8") as file:
        for point in result.points:
            for record in point.records:
                file.write(json.dumps({"point": point.label} | record.to_json()) + "\n")
    _write_csv(out / "points.csv", rows, list(rows[0]) if rows else FRONTIER_COLUMNS)
    frontier_columns = FRONTIER_COLUMNS + [c for c in (list(rows[0]) if rows else []) if c not in FRONTIER_COLUMNS]
    _write_csv(out / "frontier.csv", fronts["throughput"], frontier_columns)
    first = result.points[0] if result.points else None
    context = {
        "device": rows[0]["device_label"] if rows else "device",
        "energy": first.energy.label if first else "estimated",
    }
    charts = plot_frontiers({result.endpoint.model: rows}, out, context)
    charts["latency"] = plot_latency(rows, out / "latency.png")
    run = {
        "tool": f"tokenworks bench {__version__}",
        "command": command,
        "started_at": _iso(first.started_at) if first else None,
        "endpoint": {
            "url": result.endpoint.base_url,
            "model": result.endpoint.model,
            "models": result.endpoint.models,
            "server": result.endpoint.server,
            "max_model_len": result.endpoint.max_model_len,
        },
        "load_generator_host": host_description(),
        "workload": _plain(workload),
        "load": _plain(load),
        "slo": None if slo is None else str(slo),
        "accounting": _plain(accounting) | {"price_book": accounting.book().to_json()},
        "points": [row | {"flags": [f.to_json() for f in p.flags]} for row, p in zip(rows, result.points, strict=True)],
        "frontiers": {name: [row["label"] for row in front] for name, front in fronts.items()},
        "saturated": result.saturated,
    } | (extra or {})
    (out / "run.json").write_text(json.dumps(run, indent=2, default=str) + "\n", encoding="utf-8")
    files = ResultFiles(out, rows, fronts, charts, run)
    (out / "report.html").write_text(render_html(files, result, title), encoding="utf-8")
    return files


def plot_frontiers(series: dict[str, list[dict[str, Any]]], out: Path, context: dict[str, str]) -> dict[str, Path]:
    """One chart per frontier; each series (a run or an endpoint) gets its points and its frontier line."""
    charts: dict[str, Path] = {}
    for name, (y, maximize_y) in FRONTIERS.items():
        figure, axes = plt.subplots(figsize=(7, 4.5))
        for index, (series_name, rows) in enumerate(series.items()):
            color = f"C{index}"
            usable = [r for r in rows if r.get(X_AXIS) and r.get(y) is not None]
            axes.scatter([r[X_AXIS] for r in usable], [r[y] for r in usable], color=color, alpha=0.35)
            for row in usable:
                level = f"c={row['concurrency']}" if row["request_rate"] in (None, "") else f"{row['request_rate']}/s"
                axes.annotate(level, (row[X_AXIS], row[y]), fontsize=7, xytext=(3, 3), textcoords="offset points")
            for pair, front in _by_workload(frontiers(usable)[name]).items():
                label = series_name if len(series) > 1 else pair
                if len(series) > 1 and len({r["workload"] for r in usable}) > 1:
                    label = f"{series_name} {pair}"
                axes.plot([r[X_AXIS] for r in front], [r[y] for r in front], "-o", color=color, label=label)
        axes.set_xlabel("tokens/s per user (1 / median TPOT)")
        axes.set_ylabel(Y_LABELS[name].format(**context))
        axes.set_title(CHART_TITLES[name].format(**context), fontsize=10)
        axes.grid(alpha=0.3)
        if axes.get_legend_handles_labels()[0]:
            axes.legend(fontsize=8)
        axes.text(0.99, 0.01, "better: " + ("up and right" if maximize_y else "down and right"),
                  transform=axes.transAxes, ha="right", fontsize=7, alpha=0.6)  # fmt: skip
        figure.tight_layout()
        charts[name] = out / f"{name}.png"
        figure.savefig(charts[name], dpi=110)
        plt.close(figure)
    return charts


def plot_latency(rows: list[dict[str, Any]], path: Path) -> Path:
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for pair, group in _by_workload(rows).items():
        levels = [r["request_rate"] if r["request_rate"] not in (None, "") else r["concurrency"] for r in group]
        for column, style in (("ttft_p50_s", "-o"), ("ttft_p99_s", ":o"), ("itl_p50_s", "-s"), ("itl_p99_s", ":s")):
            values = [None if r[column] is None else r[column] * 1000 for r in group]
            axes.plot(levels, values, style, label=f"{column.split('_')[0].upper()} {column.split('_')[1]} {pair}")
    is_rate = any(r["request_rate"] not in (None, "") for r in rows)
    axes.set_xlabel("request rate (requests/s)" if is_rate else "concurrency")
    axes.set_ylabel("milliseconds")
    axes.set_yscale("log")
    axes.set_title("Time to first token and inter-token latency", fontsize=10)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def png_data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def html_page(package: str, template: str, **values: Any) -> str:
    """A page of `package`'s templates/ (this one's and the factory's report), autoescaped: whatever a user
    or a server named (a model, a prompt, a flag's message) stays text, never markup."""
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader(package),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    return environment.get_template(template).render(**values)


def render_html(files: ResultFiles, result: SweepResult, title: str | None = None) -> str:
    """report.html from templates/report.html.j2: the settings, the points, the validity flags, the charts."""
    run = files.run
    settings = [
        ("endpoint", f"{run['endpoint']['url']} ({run['endpoint']['server'] or 'server unnamed'})"),
        ("model", run["endpoint"]["model"]),
        ("workload", ", ".join(f"{k}={v}" for k, v in run["workload"].items() if v not in (None, ""))),
        ("SLO", run["slo"] or "none (every completed request is good)"),
        ("hardware", f"{run['accounting']['hardware']} x {run['accounting']['devices']:g}"),
        ("load generator", f"{run['load_generator_host']['cpu']}, {run['load_generator_host']['cores']} cores"),
        ("tool", f"{run['tool']}; {run['command']}"),
        ("started", str(run["started_at"])),
    ]
    settings += [(f"stopped early ({pair})", reason) for pair, reason in result.saturated.items()]
    columns = [
        ("point", "label", "{}"), ("requests", "completed", "{}"), ("errors", "errors", "{}"),
        ("output tok/s", "output_throughput", "{:,.1f}"), ("tok/s/user", X_AXIS, "{:,.1f}"),
        ("TTFT p50 ms", "ttft_p50_s", "ms"), ("TTFT p99 ms", "ttft_p99_s", "ms"),
        ("ITL p50 ms", "itl_p50_s", "ms"), ("TPOT p50 ms", "tpot_p50_s", "ms"), ("E2E p50 ms", "e2e_p50_s", "ms"),
        ("goodput tok/s", "goodput_tokens", "{:,.1f}"), ("attainment", "slo_attainment", "{:.0%}"),
        ("$/M out", "cost_usd_per_million_output_tokens", "{:,.3f}"),
        ("out tok/J", "energy_output_tokens_per_joule", "{:,.2f}"), ("flags", "flags", "{}"),
    ]  # fmt: skip
    on_frontier = {row["label"] for row in files.frontiers["throughput"]}
    rows = [
        {"frontier": row["label"] in on_frontier, "cells": [_format(row.get(key), form) for _, key, form in columns]}
        for row in files.rows
    ]
    return html_page(
        "tokenworks.bench",
        "report.html.j2",
        title=title or f"tokenworks bench: {run['endpoint']['model']}",
        settings=settings,
        energy=files.rows[0]["energy_label"] if files.rows else "estimated",
        headings=[title for title, _, _ in columns],
        rows=rows,
        flags=[(point.label, flag) for point in result.points for flag in point.flags],
        charts=[(name, png_data_uri(path)) for name, path in files.charts.items()],
    )


def read_points(directory: Path) -> list[dict[str, Any]]:
    """points.csv of an earlier run, with numbers as numbers (for `bench compare`)."""
    with (directory / "points.csv").open(encoding="utf-8") as file:
        return [{key: _number(value) for key, value in row.items()} for row in csv.DictReader(file)]


def _by_workload(rows: Iterable[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(row["workload"], []).append(row)
    return groups


def _write_csv(path: Path, rows: list[dict[str, Any]], columns: list[str]) -> None:
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def _number(text: str) -> Any:
    if text == "":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _format(value: Any, form: str) -> str:
    if value is None or value == "":
        return "-"
    if form == "ms":
        return f"{value * 1000:,.1f}"
    return form.format(value)


def _plain(options: Any) -> dict[str, Any]:
    """A dataclass of options as JSON values: lengths and paths as the text a user would type."""
    return {
        f.name: (getattr(options, f.name) if _is_json(getattr(options, f.name)) else str(getattr(options, f.name)))
        for f in fields(options)
    }


def _is_json(value: Any) -> bool:
    return value is None or isinstance(value, bool | int | float | str | list | dict)


def _iso(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC).isoformat(timespec="seconds")
