"""The factory's report: one self-contained HTML page and the console summary, from the stage summaries.

Both are built from the JSON summaries in factory.json (never from live objects), so the
report of a resumed run is the same as that of an uninterrupted one. Charts are the PNGs the
train and bench stages wrote, embedded as data URIs so the page is one file that can be mailed;
the page's markup is templates/report.html.j2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.table import Table

from tokenworks.bench.report import html_page, png_data_uri
from tokenworks.factory.config import FactoryConfig
from tokenworks.factory.plan_stage import plan_rows, serving_cpu_text

REPORT_NAME = "report.html"


def summary_rows(summaries: dict[str, dict[str, Any]]) -> list[tuple[str, str]]:
    """(label, value) lines: what the factory made, for the console and the page alike."""
    rows: list[tuple[str, str]] = []
    if ingest := summaries.get("ingest"):
        dropped = ", ".join(f"{reason} {count:,}" for reason, count in sorted(ingest["dropped"].items())) or "none"
        rows.append(("documents", f"{ingest['documents_read']:,} read, {ingest['documents_kept']:,} kept"))
        rows.append(("dropped", dropped))
        tokens = ingest["tokens"]
        rows.append(("tokens", ", ".join(f"{split} {count:,}" for split, count in tokens.items())))
        rows.append(("tokenizer", f"byte-level BPE, {ingest['vocab_size']:,} tokens"))
    if train := summaries.get("train"):
        final = train["final"]
        losses = f"train loss {final['train_loss']:.3f}" if final["train_loss"] is not None else "no train loss"
        if final["val_loss"] is not None:
            losses += f", validation loss {final['val_loss']:.3f} (perplexity {final['val_perplexity']:.1f})"
        rows.append(("model", f"{train['preset']}, {train['parameters']:,} parameters"))
        rows.append(
            (
                "training",
                f"{train['steps']:,} steps, {train['tokens_seen']:,} tokens at {train['tokens_per_s']:,.0f} tokens/s",
            )
        )
        rows.append(("loss", losses))
    if serve := summaries.get("serve"):
        rows.append(("served", f"{serve['model']} at {serve['url']} (up in {serve['startup_seconds']:.1f} s)"))
        rows.append(("sample", repr(serve["smoke_prompt"] + serve["smoke_completion"])[:160]))
        if serve.get("fleet"):
            workers = ", ".join(f"{worker['id']} {worker['url']}" for worker in serve["fleet"])
            rows.append(("workers", f"{len(serve['fleet'])} behind the router ({serve['router_policy']}): {workers}"))
            rows.append(("dashboard", serve["dashboard"]))
    if bench := summaries.get("bench"):
        rows.extend(bench_rows(bench))
    if flywheel := summaries.get("flywheel"):
        rows.extend(flywheel_rows(flywheel))
    if (plan := summaries.get("plan")) and plan.get("skipped"):
        rows.append(("plan", f"skipped: {plan['skipped']}"))
    elif plan:
        shown = {"ttft_p50_s": "TTFT p50", "tpot_p50_s": "TPOT p50", "output_throughput": "output tok/s"}
        errors = plan["validation"]
        told = ", ".join(f"{label} {errors[key]:.1%}" for key, label in shown.items() if errors.get(key) is not None)
        rows.append(("plan", f"simulated against this sweep, median error: {told}"))
        if plan.get("serving_cpu"):  # measured on the fleet apart from the sweep, and simulated
            rows.append(("plan probe", serving_cpu_text(plan["serving_cpu"])))
    return rows


def flywheel_rows(flywheel: dict[str, Any]) -> list[tuple[str, str]]:
    if flywheel.get("skipped"):
        return [("flywheel", f"skipped: {flywheel['skipped']}")]
    rows = [("flywheel traffic", f"{flywheel['traffic']['requests']} docs-QA requests "
             f"({flywheel['traffic']['errors']} failed), {flywheel['flagged']} flagged, "
             f"{flywheel['corrected']} corrected through /v1/feedback")]  # fmt: skip
    if flywheel.get("relative"):
        before, after, relative = flywheel["champion"], flywheel["candidate"], flywheel["relative"]
        rows.append(("flywheel", f"{flywheel['outcome']}: hard-eval loss {before['hard_eval_loss']:.4f} -> "
                     f"{after['hard_eval_loss']:.4f} ({relative['hard_eval_loss']:+.2%}), general loss "
                     f"{before['general_loss']:.4f} -> {after['general_loss']:.4f} ({relative['general_loss']:+.2%})"))  # fmt: skip
        again = flywheel["measured_again"]
        rows.append(("champion measured again", f"{again['model']}: hard-eval loss {again['hard_eval_loss']:.4f}, "
                     f"exact match {again['exact_match']:.1%}"))  # fmt: skip
    else:
        rows.append(("flywheel", flywheel["outcome"]))
    return rows


def bench_rows(bench: dict[str, Any]) -> list[tuple[str, str]]:
    rows = []
    best = max(bench["points"], key=lambda p: p["output_throughput_per_device"])
    rows.append(
        ("peak throughput", f"{best['output_throughput_per_device']:,.1f} output tokens/s per {bench['device_label']} "
         f"at concurrency {best['concurrency']} ({best['interactivity']:,.1f} tokens/s per user)")
    )  # fmt: skip
    frontier = " | ".join(
        f"{p['interactivity']:,.1f} tok/s/user -> {p['output_throughput_per_device']:,.1f} tok/s"
        for p in bench["frontier"]
    )
    rows.append(("Pareto frontier", frontier))
    good = max(bench["points"], key=lambda p: p["goodput_tokens_per_s"])
    rows.append(
        (f"goodput ({bench['slo']})", f"{good['goodput_tokens_per_s']:,.1f} good tokens/s at concurrency "
         f"{good['concurrency']}, SLO attainment {good['attainment']:.0%}")
    )  # fmt: skip
    price = bench["price"]
    rows.append(
        ("cost", f"${best['cost_per_million_output']:.3g} per million output tokens at peak "
         f"({price['hardware']} at ${price['usd_per_hour']}/h, {price['book']}; an assumption)")
    )  # fmt: skip
    rows.append(("energy", f"{best['tokens_per_joule']:,.2f} output tokens per joule at peak ({energy_note(bench)})"))
    if fleet := bench.get("sweep_fleet"):
        rows.append(("sweep per worker", ", ".join(f"{worker['id']} {worker['served']:,}" for worker in fleet)))
    shared = bench.get("shared_prefix") or {}
    for policy, run in shared.get("policies", {}).items():
        served = ", ".join(f"{worker['id']} {worker['served']}" for worker in run["workers"])
        rows.append(
            (f"shared prefix, {policy}", f"hit rate {_percent(run['hit_rate'])}, TTFT p50 {_ms(run['ttft_p50_ms'])}, "
             f"p99 {_ms(run['ttft_p99_ms'])}; requests per worker: {served}")
        )  # fmt: skip
    if shared.get("skipped"):
        rows.append(("shared prefix", f"not compared: {shared['skipped']}"))
    return rows


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f} ms"


def energy_note(bench: dict[str, Any]) -> str:
    energy = bench["energy"]
    if energy["label"] == "estimated":
        return "estimated from CPU utilisation x TDP: nothing measurable here"
    return f"measured with {energy['source'].upper()}"


def console_summary(config: FactoryConfig, summaries: dict[str, dict[str, Any]], seconds: dict[str, float]) -> Table:
    table = Table(title="tokenworks factory", show_header=False)
    for label, value in summary_rows(summaries):
        table.add_row(label, value)
    table.add_row("time", ", ".join(f"{stage} {s:.0f}s" for stage, s in seconds.items()))
    table.add_row("report", str(config.workdir / REPORT_NAME))
    return table


def write_report(config: FactoryConfig, summaries: dict[str, dict[str, Any]]) -> Path:
    """WORKDIR/report.html from templates/report.html.j2."""
    path = config.workdir / REPORT_NAME
    page = html_page(
        "tokenworks.factory",
        "report.html.j2",
        title="tokenworks factory report",
        made=summary_rows(summaries),
        charts=_charts(summaries),
        sweep=_sweep(summaries.get("bench")),
        routing=_routing(summaries.get("bench")),
        flywheel=_flywheel(summaries.get("flywheel")),
        plan=_plan(summaries.get("plan")),
        artifacts=_artifact_rows(summaries),
        times=[(stage, f"{s.get('seconds', 0):.1f} s") for stage, s in summaries.items()],
    )
    path.write_text(page, encoding="utf-8")
    return path


def _plan(plan: dict[str, Any] | None) -> dict[str, Any] | None:
    """The plan stage's table: what the bench's workload would cost on each GPU, at its SLOs."""
    if not plan or plan.get("skipped"):
        return None
    forecast = plan["forecast"]
    return {
        "forecast": f"{forecast['request_rate']:.2f} requests/s, {forecast['input_tokens']} tokens in, "
        f"{forecast['output_tokens']} out, SLOs {forecast['slo']}",
        "rows": plan_rows(plan),
    }


def _artifact_rows(summaries: dict[str, dict[str, Any]]) -> list[tuple[str, str]]:
    return [
        (f"{stage}: {name}", location)
        for stage, summary in summaries.items()
        for name, location in summary.get("artifacts", {}).items()
    ]


def _charts(summaries: dict[str, dict[str, Any]]) -> list[tuple[str, str]]:
    """(caption, data URI) of each chart the stages wrote that is still on disk."""
    charts = [("Training loss", summaries.get("train", {}).get("artifacts", {}).get("loss_plot"))]
    charts += list(summaries.get("bench", {}).get("charts", {}).items())
    return [
        (caption, png_data_uri(Path(location))) for caption, location in charts if location and Path(location).is_file()
    ]


def _sweep(bench: dict[str, Any] | None) -> dict[str, Any] | None:
    """The bench stage's points as table rows, the frontier's marked."""
    if not bench:
        return None
    columns = [
        ("concurrency", "concurrency", "{}"),
        ("output tok/s per device", "output_throughput_per_device", "{:,.1f}"),
        ("tok/s per user", "interactivity", "{:,.1f}"),
        ("TTFT p50 (ms)", "ttft_p50_ms", "{:,.1f}"),
        ("ITL p50 (ms)", "itl_p50_ms", "{:,.1f}"),
        ("goodput tok/s", "goodput_tokens_per_s", "{:,.1f}"),
        ("SLO attainment", "attainment", "{:.0%}"),
        ("$ per M output tokens", "cost_per_million_output", "{:.3g}"),
        ("tokens per joule", "tokens_per_joule", "{:,.2f}"),
        ("errors", "errors", "{}"),
    ]
    frontier = {p["concurrency"] for p in bench["frontier"]}
    rows = [
        {
            "frontier": point["concurrency"] in frontier,
            "cells": ["-" if point.get(key) is None else form.format(point[key]) for _, key, form in columns],
        }
        for point in bench["points"]
    ]
    return {
        "energy": energy_note(bench),
        "book": bench["price"]["book"],
        "headings": [title for title, _, _ in columns],
        "rows": rows,
    }


def _routing(bench: dict[str, Any] | None) -> dict[str, Any] | None:
    """The shared-prefix comparison as two tables: one row per policy, one per policy and worker."""
    shared = (bench or {}).get("shared_prefix") or {}
    if not shared.get("policies"):
        return None
    settings = shared["settings"]
    policies, workers = [], []
    for policy, run in shared["policies"].items():
        policies.append(
            [
                policy, f"{run['completed']} of {run['requests']}", _percent(run["hit_rate"]),
                _ms(run["ttft_p50_ms"]), _ms(run["ttft_p99_ms"]), _ms(run["tpot_p50_ms"]),
                "-" if run["output_tokens_per_s"] is None else f"{run['output_tokens_per_s']:,.1f}",
                ", ".join(f"{worker['id']} {worker['served']}" for worker in run["workers"]),
            ]
        )  # fmt: skip
        for worker in run["workers"]:
            decisions = ", ".join(f"{reason} {count}" for reason, count in sorted(worker["decisions"].items())) or "-"
            workers.append(
                [
                    policy, worker["id"], str(worker["served"]), f"{worker['prompt_tokens']:,}",
                    f"{worker['cached_tokens']:,}", _percent(worker["hit_rate"]), decisions,
                ]
            )  # fmt: skip
    return {
        "workload": (
            f"{settings['num_prefixes']} system prompts of {settings['prefix_tokens']} tokens x "
            f"{settings['questions_per_prefix']} questions of {settings['question_tokens']} tokens each "
            f"({shared['requests']} requests, {settings['output_tokens']} output tokens) at concurrency "
            f"{settings['concurrency']}, on {settings['workers']} workers"
        ),
        "policy_headings": [
            "policy", "requests", "prefix hit rate", "TTFT p50", "TTFT p99", "TPOT p50", "output tok/s",
            "requests per worker",
        ],
        "policies": policies,
        "worker_headings": ["policy", "worker", "requests", "prompt tokens", "cached tokens", "hit rate", "decisions"],
        "workers": workers,
    }  # fmt: skip


def _flywheel(flywheel: dict[str, Any] | None) -> dict[str, Any] | None:
    """The iteration's before/after table and its promotion log, as the page shows them."""
    if not flywheel or flywheel.get("skipped") or not flywheel.get("rows"):
        return None
    from datetime import UTC, datetime

    log = [
        [str(entry["id"]), datetime.fromtimestamp(entry["time"], UTC).strftime("%H:%M:%S"), entry["actor"],
         entry["action"], entry["alias"] or "", "" if entry["from_version"] is None else str(entry["from_version"]),
         "" if entry["to_version"] is None else str(entry["to_version"]), entry["reason"]]
        for entry in flywheel["log"]
    ]  # fmt: skip
    gate = flywheel["gate"]
    return {
        "outcome": flywheel["outcome"],
        "gate": f"hard-eval loss down by at least {gate['margin']:.0%}, general loss up by at most {gate['tolerance']:.0%}",
        "reasons": flywheel["decision"]["reasons"],
        "rows": flywheel["rows"],
        "log": log,
    }
