"""The bench stage's shared-prefix comparison: one workload, routed under each policy in turn.

K system prompts of P tokens, each followed by M different questions (`tokenworks bench run
--workload shared-prefix`), sent closed-loop at concurrency C: the [bench] settings
`num_prefixes`, `questions_per_prefix`, `prefix_tokens`, `question_tokens`,
`shared_prefix_output_tokens` and `shared_prefix_concurrency`. The same seeded workload runs
once per policy of `shared_prefix_policies` (kv, then round-robin), with no warmup requests:
the first request of each prefix is part of what is compared.

Each policy gets a fleet of its own, started afresh as the serve stage started its fleet (the
[serve] workers, threads, cores and engine settings) but with `--router-policy POLICY`, and
stopped after its run: every run starts from cold KV caches and a router that has learnt
nothing, and only the policy differs. (Sending both runs through one long-lived fleet would
hand the second policy the caches the first one filled.) The sweep's fleet is stopped first, so
each run has the cores to itself; the pipeline starts it again for `--keep-serving`.

What each run records, in WORKDIR/bench/shared_prefix.json and the stage's summary:
- TTFT p50 and p99, TPOT p50 and output tokens/s: the load generator's own (bench/metrics.py);
- the prefix hit rate, reported cached prompt tokens over prompt tokens, in all and per worker:
  the router's /metrics counters (`tokenworks_router_prompt_tokens_total`,
  `tokenworks_router_reported_cached_tokens_total`, from the workers' usage) before and after;
- requests served per worker: the router's /workers before and after; and its decisions by
  worker and reason (`tokenworks_router_decisions_total`).
Every request's record goes to WORKDIR/bench/shared_prefix_requests.jsonl.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console

from tokenworks.factory.config import FactoryConfig
from tokenworks.factory.server import ServerProcess

RESULTS_NAME = "shared_prefix.json"
REQUESTS_NAME = "shared_prefix_requests.jsonl"
CHART_NAME = "shared_prefix.png"
CHART_CAPTION = "Shared prefix: TTFT, prefix hit rate and requests per worker, by routing policy"
SETTLE_S = 10.0  # the router counts a stream's end just after its last chunk left: wait that long at most
COUNTERS = {
    "tokenworks_router_prompt_tokens": "prompt_tokens",
    "tokenworks_router_reported_cached_tokens": "cached_tokens",
}
DECISIONS = "tokenworks_router_decisions"


def settings_of(config: FactoryConfig) -> dict[str, Any]:
    bench = config.bench
    return {
        "num_prefixes": bench.num_prefixes,
        "questions_per_prefix": bench.questions_per_prefix,
        "prefix_tokens": bench.prefix_tokens,
        "question_tokens": bench.question_tokens,
        "output_tokens": bench.shared_prefix_output_tokens,
        "concurrency": bench.shared_prefix_concurrency,
        "seed": bench.seed,
        "workers": config.serve.workers,
    }


def run_shared_prefix_comparison(
    config: FactoryConfig,
    checkpoint: Path,
    model: str,
    out: Path,
    sweep_server: ServerProcess,
    start_fleet: Callable[[str], ServerProcess],
    console: Console,
) -> dict[str, Any]:
    """Each policy's run on a fresh fleet (`start_fleet(policy)`); the summary the report shows."""
    from tokenworks.bench.prompts import ModelTokenizer

    bench, settings = config.bench, settings_of(config)
    requests = bench.num_prefixes * bench.questions_per_prefix
    result: dict[str, Any] = {"settings": settings, "requests": requests, "policies": {}, "skipped": None}
    if config.serve.workers < 2:
        return result | {"skipped": "one worker ([serve] workers = 1): there is no router to compare policies in"}
    if not bench.shared_prefix_policies:
        return result | {"skipped": "no policies to compare ([bench] shared_prefix_policies is empty)"}
    sweep_server.stop()  # its cores go to the comparison's fleets
    tokenizer = ModelTokenizer.load(checkpoint)
    records: list[dict[str, Any]] = []
    for policy in bench.shared_prefix_policies:
        console.print(f"Shared prefix under [bold]{policy}[/]: a fresh fleet of {config.serve.workers} workers")
        with start_fleet(policy) as fleet:
            console.print(f"  router dashboard while it runs: [bold]{fleet.url}/dashboard[/]")
            run, policy_records = _measure(config, fleet, model, tokenizer, policy, console)
        run["fleet_startup_seconds"] = round(fleet.startup_seconds, 2)
        result["policies"][policy] = run
        records += [{"policy": policy} | record for record in policy_records]
    out.mkdir(parents=True, exist_ok=True)
    (out / RESULTS_NAME).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    with (out / REQUESTS_NAME).open("w", encoding="utf-8") as file:
        for record in records:
            file.write(json.dumps(record) + "\n")
    chart = plot_comparison(result, out / CHART_NAME)
    return result | {
        "chart": str(chart),
        "artifacts": {"results": str(out / RESULTS_NAME), "requests": str(out / REQUESTS_NAME)},
    }


def _measure(
    config: FactoryConfig, fleet: ServerProcess, model: str, tokenizer, policy: str, console: Console
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from tokenworks.bench.loadgen import LoadOptions
    from tokenworks.bench.runner import Accounting, Target, measure_point
    from tokenworks.bench.slo import SLO
    from tokenworks.bench.workloads import WorkloadOptions

    bench = config.bench
    workload = WorkloadOptions(
        kind="shared-prefix", api="completions", input_tokens=bench.question_tokens,
        output_tokens=bench.shared_prefix_output_tokens, num_prefixes=bench.num_prefixes,
        questions_per_prefix=bench.questions_per_prefix, prefix_tokens=bench.prefix_tokens,
    )  # fmt: skip
    count = bench.num_prefixes * bench.questions_per_prefix  # one pass: each question once
    load = LoadOptions(concurrency=bench.shared_prefix_concurrency, num_requests=count, seed=bench.seed)
    accounting = Accounting(hardware=bench.hardware, price_book=bench.price_book)
    target = Target(url=fleet.url, model=model)
    label = f"shared-prefix {policy}"
    before_workers, before_counters = fleet.get_json("/workers"), router_counters(fleet.get_text("/metrics"))
    with Progress(
        TextColumn("{task.description:<32}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    ) as bars:
        task = bars.add_task(label, total=count)
        point = asyncio.run(
            measure_point(
                target, workload, load, SLO.parse(bench.slo), accounting, accounting.book(), label, bench.seed,
                tokenizer, on_progress=lambda done, total: bars.update(task, completed=done, total=total),
            )
        )  # fmt: skip
    after_workers = _settled_workers(fleet)
    after_counters = router_counters(fleet.get_text("/metrics"))
    run = policy_summary(point.metrics, before_workers, after_workers, before_counters, after_counters)
    return run | {"policy": policy}, [record.to_json() for record in point.records]


def _settled_workers(fleet: ServerProcess) -> dict[str, Any]:
    """GET /workers once the router has closed every request (its counters are then complete)."""
    deadline = time.monotonic() + SETTLE_S
    while True:
        answer = fleet.get_json("/workers")
        if not any(worker["in_flight"] for worker in answer["workers"]) or time.monotonic() > deadline:
            return answer
        time.sleep(0.05)


def router_counters(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The router's counters from its /metrics text: (family, sorted labels) -> value."""
    from prometheus_client.parser import text_string_to_metric_families

    values = {}
    for family in text_string_to_metric_families(text):
        if family.type != "counter":
            continue
        for sample in family.samples:
            if sample.name.endswith("_total"):
                values[(family.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values


def policy_summary(metrics, before_workers, after_workers, before_counters, after_counters) -> dict[str, Any]:
    """One policy's figures: the load generator's latencies, and the router's counts between two reads."""

    def ms(value: float | None) -> float | None:
        return None if value is None else round(value * 1000, 3)

    delta = {key: value - before_counters.get(key, 0.0) for key, value in after_counters.items()}
    served_before = {worker["id"]: worker["served"] for worker in before_workers["workers"]}
    workers = []
    for worker in after_workers["workers"]:
        url = worker["url"]
        tokens = {name: int(delta.get((family, (("worker", url),)), 0)) for family, name in COUNTERS.items()}
        decisions: dict[str, int] = {}
        for (family, labels), value in delta.items():
            named = dict(labels)
            if family == DECISIONS and named.get("worker") == url and value:
                decisions[named["reason"]] = decisions.get(named["reason"], 0) + int(value)
        workers.append(
            {
                "id": worker["id"],
                "url": url,
                "served": worker["served"] - served_before.get(worker["id"], 0),
                **tokens,
                "hit_rate": _ratio(tokens["cached_tokens"], tokens["prompt_tokens"]),
                "decisions": dict(sorted(decisions.items())),
            }
        )
    prompt_tokens = sum(worker["prompt_tokens"] for worker in workers)
    cached_tokens = sum(worker["cached_tokens"] for worker in workers)
    return {
        "requests": metrics.requests,
        "completed": metrics.completed,
        "errors": metrics.errors,
        "ttft_p50_ms": ms(metrics.ttft.p50),
        "ttft_p99_ms": ms(metrics.ttft.p99),
        "tpot_p50_ms": ms(metrics.tpot.p50),
        "output_tokens_per_s": None if metrics.output_throughput is None else round(metrics.output_throughput, 2),
        "duration_s": None if metrics.duration is None else round(metrics.duration, 3),
        "prompt_tokens": prompt_tokens,
        "cached_tokens": cached_tokens,
        "hit_rate": _ratio(cached_tokens, prompt_tokens),
        "workers": workers,
    }


def _ratio(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def plot_comparison(result: dict[str, Any], path: Path) -> Path:
    """Three panels by policy: TTFT p50 and p99, the prefix hit rate, requests served per worker."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    policies = list(result["policies"])
    runs = [result["policies"][policy] for policy in policies]
    positions = range(len(policies))
    figure, (ttft, hits, load) = plt.subplots(1, 3, figsize=(11, 3.4))
    width = 0.38
    ttft.bar([p - width / 2 for p in positions], [run["ttft_p50_ms"] or 0 for run in runs], width, label="p50")
    ttft.bar([p + width / 2 for p in positions], [run["ttft_p99_ms"] or 0 for run in runs], width, label="p99")
    ttft.set_title("TTFT (ms)")
    ttft.legend()
    hits.bar(positions, [run["hit_rate"] or 0 for run in runs], 0.6, color="tab:green")
    hits.set_ylim(0, 1)
    hits.set_title("prefix hit rate (cached / prompt tokens)")
    ids = sorted({worker["id"] for run in runs for worker in run["workers"]})
    step = 0.8 / max(len(ids), 1)
    for index, worker_id in enumerate(ids):
        served = [next((w["served"] for w in run["workers"] if w["id"] == worker_id), 0) for run in runs]
        load.bar([p - 0.4 + step * (index + 0.5) for p in positions], served, step, label=worker_id)
    load.set_title("requests served per worker")
    load.legend()
    for axes in (ttft, hits, load):
        axes.set_xticks(list(positions), policies)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return path
