"""The factory's plan stage: the trained model profiled on this host, the simulator validated
against the sweep the bench stage just measured, and what that workload would cost on each GPU.

    profile   `tokenworks plan profile CHECKPOINT --quick` (a subprocess: torch and the engine)
    probe     what serving costs the fleet's cores outside the engine's steps, per request and per
              streamed token, measured on the fleet the bench stage measured (serving_cpu.py, as
              benchmarks/plan_accuracy.py measures it)
    validate  `tokenworks plan validate CHECKPOINT --measured WORKDIR/bench`, with the settings served
              and the probe's figures
    costs     `plan fleet`'s search (fleet.py) per GPU of the catalog: the bench's prompt and output
              lengths, at the highest request rate this host served within the SLOs, the same SLOs

Everything lands in WORKDIR/plan; the summary (kept in factory.json) holds the probe's figures, the
validation's median errors and one cost row per GPU, which the report shows.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from rich.console import Console

from tokenworks.bench.metrics import CAPACITY_ATTAINMENT
from tokenworks.bench.slo import SLO
from tokenworks.errors import PlanError
from tokenworks.factory.config import FactoryConfig
from tokenworks.factory.server import ServerProcess
from tokenworks.model.config import ModelConfig
from tokenworks.plan.fleet import Forecast, SearchOptions, plan_fleet
from tokenworks.plan.hardware import Catalog
from tokenworks.plan.serving_cpu import (
    CPU_FIGURES,
    ServingProcesses,
    probe_serving_cpu,
    request_cpu,
    validate_options,
)

COST_REQUESTS = 500  # simulated per replica and configuration: a few seconds for the whole catalog


def run_plan_stage(
    config: FactoryConfig, checkpoint: Path, workdir: Path, server: ServerProcess, served_model: str, console: Console
) -> dict[str, Any]:
    """`server`: the fleet the bench stage measured, running."""
    out = workdir / "plan"
    out.mkdir(parents=True, exist_ok=True)
    bench_dir, profile = workdir / "bench", out / "profile.json"
    console.print("[bold]plan[/]: profiling the trained model's engine steps on this host (--quick)")
    _tokenworks("plan", "profile", str(checkpoint), "--quick", "--out", str(profile))
    console.print("[bold]plan[/]: serving's CPU outside the engine's steps, on the fleet (concurrency 1)")
    cpu = probe_fleet(config, checkpoint, server, served_model, out / "serving-cpu", profile)
    console.print(f"[bold]plan[/]: the simulator against the sweep just measured ({serving_cpu_text(cpu)})")
    serve = config.serve
    _tokenworks(
        "plan", "validate", str(checkpoint), "--profile", str(profile), "--measured", str(bench_dir),
        "--replicas", str(serve.workers), "--router-policy", serve.router_policy,
        "--kv-cache-memory-gib", str(serve.kv_cache_memory_gib),  # each worker's (serve passes it to every one)
        "--max-num-seqs", str(serve.max_num_seqs), "--out", str(out / "validation"), *validate_options(cpu),
    )  # fmt: skip
    validation = json.loads((out / "validation" / "validation.json").read_text(encoding="utf-8"))
    rate = served_rate(bench_dir / "points.csv")
    bench = config.bench
    console.print(f"[bold]plan[/]: the workload at {rate:.2f} requests/s on each GPU of the catalog")
    costs = gpu_costs(ModelConfig.load(checkpoint), rate, bench.input_tokens, bench.output_tokens, bench.slo)
    forecast = {"request_rate": rate, "input_tokens": bench.input_tokens, "output_tokens": bench.output_tokens}
    return {
        "serving_cpu": cpu,
        "validation": {key: metric["median_abs_error"] for key, metric in validation["metrics"].items()},
        "validation_passes": {key: metric["passes"] for key, metric in validation["metrics"].items()},
        "forecast": forecast | {"slo": bench.slo},
        "costs": costs,
        "artifacts": {
            "profile": str(profile),
            "serving_cpu": str(out / "serving-cpu.json"),
            "validation": str(out / "validation" / "validation.json"),
        },
    }


def probe_fleet(
    config: FactoryConfig, checkpoint: Path, server: ServerProcess, served_model: str, out: Path, profile: Path
) -> dict[str, float]:
    """The serving CPU probe (serving_cpu.py) on the running fleet, with the bench stage's workload;
    every run under `out`, the probe in `out`.json. The figures, in seconds (CPU_FIGURES)."""
    if not server.running or server.process is None:
        raise PlanError("the fleet is not running: the plan stage measures serving's CPU on it")
    bench = config.bench
    workload = ["--model", served_model, "--api", "completions", "--workload", "synthetic",
                "--input-tokens", bench.input_tokens, "--output-tokens", bench.output_tokens]  # fmt: skip
    processes = ServingProcesses.of_serve(server.process.pid, config.serve.workers)
    probe = probe_serving_cpu(server.url, checkpoint, workload, processes, out)
    probe["request_cpu_s"] = request_cpu(probe, profile)
    out.with_suffix(".json").write_text(json.dumps(probe, indent=1) + "\n", encoding="utf-8")
    return {key: probe[key] for key in CPU_FIGURES}


def serving_cpu_text(cpu: dict[str, float]) -> str:
    """The probe's figures in a line, for the console and the report."""
    text = f"serving CPU a request: API server {cpu['way_in_cpu_s'] * 1e3:.2f} ms"
    if cpu.get("router_cpu_s"):
        text += f", router {cpu['router_cpu_s'] * 1e3:.2f} ms"
    text += f", engine outside its steps {cpu['request_cpu_s'] * 1e3:.2f} ms (not simulated)"
    if cpu.get("stream_cpu_s"):
        text += f"; a streamed token: router and client {cpu['stream_cpu_s'] * 1e3:.2f} ms"
    return text


def _tokenworks(*args: str) -> None:
    result = subprocess.run([sys.executable, "-m", "tokenworks", *args], capture_output=True, text=True)
    if result.returncode:
        last = (result.stderr.strip() or result.stdout.strip()).splitlines()[-1:] or ["no output"]
        raise PlanError(f"`tokenworks {' '.join(args[:2])}` failed: {last[0]}")


def served_rate(points_csv: Path) -> float:
    """The highest request throughput of a measured point whose SLO attainment reached the capacity
    rule's 90% (any point's highest when none did): the load this host served within its SLOs."""
    try:
        with points_csv.open(encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except OSError as error:
        raise PlanError(f"cannot read the bench stage's points {points_csv}: {error.strerror or error}") from None
    rates = [(float(row["request_throughput"] or 0), float(row["slo_attainment"] or 0)) for row in rows]
    if not rates:
        raise PlanError(f"{points_csv} has no points")
    good = [rate for rate, attainment in rates if attainment >= CAPACITY_ATTAINMENT]
    return max(good or [rate for rate, _ in rates])


def gpu_costs(
    model: ModelConfig, rate: float, input_tokens: str, output_tokens: str, slo: str, catalog: Catalog | None = None,
    requests: int = COST_REQUESTS,
) -> list[dict[str, Any]]:  # fmt: skip
    """Per GPU of the catalog, the cheapest colocated fleet meeting `slo` at `rate` (or the closest)."""
    catalog = catalog or Catalog.load()
    options = SearchOptions(requests=requests, disaggregate=False)
    forecast, objective = Forecast(rate, input_tokens, output_tokens), SLO.parse(slo)
    rows = []
    for name in catalog.names:
        plan = plan_fleet(model, forecast, objective, catalog, [name], options)
        candidate = plan.best.get(name) or plan.closest.get(name)
        gpu = catalog.gpu(name)
        price = gpu.figures["usd_per_hour"]
        if candidate is None:  # the weights do not fit at any width searched
            rows.append({"gpu": name, "meets": False, "note": "; ".join(plan.skipped) or "no configuration"})
            continue
        rows.append({
            "gpu": name, "meets": candidate.meets, "layout": f"{candidate.replicas} x tp{candidate.tp}",
            "gpus": candidate.gpus, "attainment": candidate.attainment, "ttft_p50_ms": candidate.ttft_p50 * 1e3,
            "tpot_p50_ms": candidate.tpot_p50 * 1e3, "usd_per_million_tokens": candidate.usd_per_million_tokens,
            "tokens_per_second_per_megawatt": candidate.tokens_per_second_per_megawatt,
            "usd_per_hour": price.value, "price_source": price.source,
        })  # fmt: skip
    return rows


def plan_rows(plan: dict[str, Any]) -> list[tuple[str, ...]]:
    """The report's table: one row per GPU (GPU, fleet, TTFT p50, TPOT p50, $/Mtok, tokens/s per MW)."""
    rows = []
    for row in plan.get("costs", []):
        if "layout" not in row:
            rows.append((row["gpu"], "does not fit", "", "", "", ""))
            continue
        fleet = f"{row['layout']} ({row['gpus']} GPU{'s' if row['gpus'] > 1 else ''})"
        if not row["meets"]:
            fleet += f", closest: {row['attainment']:.0%} within the SLOs"
        rows.append((row["gpu"], fleet, f"{row['ttft_p50_ms']:,.1f} ms", f"{row['tpot_p50_ms']:,.2f} ms",
                     f"${row['usd_per_million_tokens']:,.4f}", f"{row['tokens_per_second_per_megawatt']:,.0f}"))  # fmt: skip
    return rows
