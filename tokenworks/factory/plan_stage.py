"""The factory's plan stage: the trained model profiled on this host, the simulator validated
against the sweep the bench stage just measured, and what that workload would cost on each GPU.

    profile   `tokenworks plan profile CHECKPOINT --quick` (a subprocess: torch and the engine)
    validate  `tokenworks plan validate CHECKPOINT --measured WORKDIR/bench`, with the settings served
    costs     `plan fleet`'s search (fleet.py) per GPU of the catalog: the bench's prompt and output
              lengths, at the highest request rate this host served within the SLOs, the same SLOs

Everything lands in WORKDIR/plan; the summary (kept in factory.json) holds the validation's median
errors and one cost row per GPU, which the report shows.
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
from tokenworks.model.config import ModelConfig
from tokenworks.plan.fleet import Forecast, SearchOptions, plan_fleet
from tokenworks.plan.hardware import Catalog

COST_REQUESTS = 500  # simulated per replica and configuration: a few seconds for the whole catalog


def run_plan_stage(config: FactoryConfig, checkpoint: Path, workdir: Path, console: Console) -> dict[str, Any]:
    out = workdir / "plan"
    out.mkdir(parents=True, exist_ok=True)
    bench_dir, profile = workdir / "bench", out / "profile.json"
    console.print("[bold]plan[/]: profiling the trained model's engine steps on this host (--quick)")
    _tokenworks("plan", "profile", str(checkpoint), "--quick", "--out", str(profile))
    console.print("[bold]plan[/]: the simulator against the sweep just measured")
    serve = config.serve
    _tokenworks(
        "plan", "validate", str(checkpoint), "--profile", str(profile), "--measured", str(bench_dir),
        "--replicas", str(serve.workers), "--router-policy", serve.router_policy,
        "--kv-cache-memory-gib", str(serve.kv_cache_memory_gib),  # each worker's (serve passes it to every one)
        "--max-num-seqs", str(serve.max_num_seqs), "--out", str(out / "validation"),
    )  # fmt: skip
    validation = json.loads((out / "validation" / "validation.json").read_text(encoding="utf-8"))
    rate = served_rate(bench_dir / "points.csv")
    bench = config.bench
    console.print(f"[bold]plan[/]: the workload at {rate:.2f} requests/s on each GPU of the catalog")
    costs = gpu_costs(ModelConfig.load(checkpoint), rate, bench.input_tokens, bench.output_tokens, bench.slo)
    forecast = {"request_rate": rate, "input_tokens": bench.input_tokens, "output_tokens": bench.output_tokens}
    return {
        "validation": {key: metric["median_abs_error"] for key, metric in validation["metrics"].items()},
        "validation_passes": {key: metric["passes"] for key, metric in validation["metrics"].items()},
        "forecast": forecast | {"slo": bench.slo},
        "costs": costs,
        "artifacts": {"profile": str(profile), "validation": str(out / "validation" / "validation.json")},
    }


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
