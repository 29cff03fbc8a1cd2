"""The stages of the factory line, each reading the previous stage's artifacts from the workdir.

    ingest  WORKDIR/data    curated documents -> tokenizer + token shards + manifest.json
    train   WORKDIR/train   token shards -> a Hugging Face checkpoint (train/checkpoint)
    serve   WORKDIR/serve   `tokenworks serve --workers N` on that checkpoint (the router in front
                            of N engine workers; one plain server for N = 1), checked with one completion
    bench   WORKDIR/bench   `tokenworks bench sweep` against the server: points, frontier, costs;
                            then a shared-prefix workload under each routing policy (shared_prefix.py)
    flywheel WORKDIR/flywheel   docs-QA traffic to the fleet (its request log on), corrections
                            through /v1/feedback, one flywheel iteration (promote or refuse), the
                            champion measured again (flywheel_stage.py)
    plan    WORKDIR/plan        the engine's steps profiled on this host, serving's CPU measured on
                            the fleet, the simulator validated against the bench stage's sweep,
                            and that workload's cost on each GPU of the catalog (plan_stage.py)
    report  WORKDIR/report.html and the console summary

Each stage returns a small JSON summary (kept in factory.json) that the report is built from,
so the report can be rebuilt without re-running anything.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import urllib.request
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from tokenworks.factory.config import FactoryConfig
from tokenworks.factory.server import ServerProcess
from tokenworks.factory.shared_prefix import CHART_CAPTION as SHARED_PREFIX_CAPTION
from tokenworks.factory.shared_prefix import run_shared_prefix_comparison

SERVED_MODEL_NAME = "factory-model"


@dataclass(slots=True)
class StageContext:
    config: FactoryConfig
    console: Console
    summaries: dict[str, dict[str, Any]]  # of the stages finished so far, this run or earlier
    server: ServerProcess | None = None

    @property
    def workdir(self) -> Path:
        return self.config.workdir

    @property
    def checkpoint(self) -> Path:
        return self.workdir / "train" / "checkpoint"


def run_ingest_stage(context: StageContext) -> dict[str, Any]:
    from tokenworks.data.cli import RichIngestProgress, ingest_bars
    from tokenworks.data.pipeline import IngestOptions, run_ingest

    data = context.config.data
    options = IngestOptions(
        out=context.workdir / "data", workers=data.workers, vocab_size=data.vocab_size, limit=data.max_documents
    )
    if data.sources:
        options.sources = list(data.sources)
    with ingest_bars(context.console) as bars:
        result = run_ingest(options, RichIngestProgress(bars))
    dropped: dict[str, int] = {}
    for stage in result.stages:
        if stage.stage == "split":  # the split moves documents to train or validation; it drops none
            continue
        for reason, count in stage.dropped.items():
            if count:
                dropped[reason] = dropped.get(reason, 0) + count
    shards = result.manifest["shards"]
    return {
        "sources": options.sources,
        "documents_read": result.stages[0].documents_out,
        "documents_kept": result.stages[-1].documents_out,
        "characters_kept": result.stages[-1].characters_out,
        "dropped": dropped,
        "tokens": shards["tokens"],
        "vocab_size": result.manifest["tokenizer"]["vocab_size"],
        "artifacts": {
            "data": str(result.out),
            "manifest": str(result.out / "manifest.json"),
            "rejected": str(result.out / "rejected"),
        },
    }


def run_train_stage(context: StageContext) -> dict[str, Any]:
    from tokenworks.train.cli import TrainProgressView
    from tokenworks.train.config import LoopConfig, OptimConfig, PretrainConfig
    from tokenworks.train.pretrain import run_pretrain

    train, out = context.config.train, context.workdir / "train"
    shutil.rmtree(out, ignore_errors=True)  # a re-run starts over; earlier stages are untouched
    loop = LoopConfig(
        out=out,
        context=train.context,
        batch_size=train.batch_size,
        time_budget_s=train.time_budget_s,
        seed=train.seed,
        eval_interval=50,
        eval_tokens=16_384,
        optim=OptimConfig(lr=train.lr),
    )
    config = PretrainConfig(data=context.workdir / "data", preset=train.preset, loop=loop)
    with TrainProgressView(loop) as view:
        run = run_pretrain(config, on_event=view.on_event)
    record = run.record
    return {
        "preset": train.preset,
        "parameters": record["parameters"],
        "steps": record["steps"],
        "stopped_by": record["stopped_by"],
        "tokens_seen": record["tokens_seen"],
        "tokens_per_s": record["tokens_per_s"],
        "train_seconds": record["train_seconds"],
        "final": record["final"],
        "artifacts": {
            "run": str(out),
            "checkpoint": str(run.checkpoint),
            "metrics": str(out / "metrics.jsonl"),
            "loss_plot": str(out / "loss.png"),
        },
    }


def start_server(context: StageContext, policy: str | None = None, log_name: str = "server.log") -> ServerProcess:
    """`tokenworks serve` with the [serve] settings: with workers > 1, a fleet behind the router
    (under `policy`, default the [serve] one), on any free port unless [serve] names one."""
    serve = context.config.serve
    args = ["--kv-cache-memory-gib", str(serve.kv_cache_memory_gib), "--max-num-seqs", str(serve.max_num_seqs)]
    args += ["--max-num-batched-tokens", str(serve.max_num_batched_tokens)]
    args += ["--bench-results", str(context.workdir / "bench")]
    if serve.log_requests and policy is None:  # the fleet the flywheel stage reads, not the comparison's
        args += ["--log-db", str(context.workdir / "serve" / "requests.db")]
    if serve.threads is not None:
        args += ["--threads", str(serve.threads)]
    if serve.workers > 1:
        args += ["--workers", str(serve.workers), "--router-policy", policy or serve.router_policy]
    port = serve.port if policy is None else 0  # a policy's own fleet: the configured port may still be held
    log = context.workdir / "serve" / log_name
    return ServerProcess(context.checkpoint, SERVED_MODEL_NAME, log, port, args)


def run_serve_stage(context: StageContext) -> dict[str, Any]:
    """The server is up (the pipeline started it); prove it serves the trained model."""
    server, serve = context.server, context.config.serve
    assert server is not None, "the pipeline starts the server before the serve stage"
    body = {"model": SERVED_MODEL_NAME, "prompt": serve.smoke_prompt, "max_tokens": serve.smoke_tokens}
    body |= {"temperature": 0.0, "ignore_eos": True}  # greedy and full length: a reproducible sample
    request = urllib.request.Request(
        f"{server.url}/v1/completions", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        answer = json.loads(response.read())
    fleet = server.get_json("/workers") if serve.workers > 1 else None
    return {
        "url": server.url,
        "dashboard": f"{server.url}/dashboard",  # the router's (per-worker load and prefix hits) or the server's
        "model": SERVED_MODEL_NAME,
        "workers": serve.workers,
        "router_policy": fleet["policy"] if fleet else None,
        "fleet": [_worker_row(worker) for worker in fleet["workers"]] if fleet else [],
        "startup_seconds": round(server.startup_seconds, 2),
        "smoke_prompt": serve.smoke_prompt,
        "smoke_completion": answer["choices"][0]["text"],
        "smoke_usage": answer["usage"],
        "artifacts": {"log": str(server.log_path)},
    }


def _worker_row(worker: dict[str, Any]) -> dict[str, Any]:
    return {key: worker.get(key) for key in ("id", "url", "healthy", "served", "in_flight")}


def run_bench_stage(context: StageContext) -> dict[str, Any]:
    """A closed-loop sweep of the served model with the [bench] settings, written to WORKDIR/bench."""
    from tokenworks.bench.loadgen import LoadOptions
    from tokenworks.bench.report import write_results
    from tokenworks.bench.runner import Accounting, Target
    from tokenworks.bench.slo import SLO
    from tokenworks.bench.sweep import SweepPlan, run_sweep
    from tokenworks.bench.workloads import WorkloadOptions

    server, bench = context.server, context.config.bench
    assert server is not None, "the pipeline starts the server before the bench stage"
    out = context.workdir / "bench"
    shutil.rmtree(out, ignore_errors=True)
    context.console.print(f"Live dashboard while the sweep runs: [bold]{server.url}/dashboard[/]")
    target = Target(url=server.url, model=SERVED_MODEL_NAME, tokenizer=context.checkpoint)
    plan = SweepPlan(
        concurrencies=list(bench.concurrency),
        io_pairs=[(bench.input_tokens, bench.output_tokens)],
        requests_per_point=bench.requests_per_point,
    )
    workload = WorkloadOptions(kind="synthetic", api="completions")
    load = LoadOptions(warmup_requests=bench.warmup_requests, seed=bench.seed)
    slo = SLO.parse(bench.slo)
    accounting = Accounting(hardware=bench.hardware, price_book=bench.price_book)
    result = asyncio.run(run_sweep(target, workload, load, plan, slo, accounting, context.console))
    files = write_results(out, result, workload, load, slo, accounting, command="tokenworks factory (bench stage)")
    summary = files.summary()
    if context.config.serve.workers > 1:  # the sweep's load per worker, as the router saw it
        summary["sweep_fleet"] = [_worker_row(worker) for worker in server.get_json("/workers")["workers"]]
    summary["shared_prefix"] = run_shared_prefix_comparison(
        context.config, context.checkpoint, SERVED_MODEL_NAME, out, server,
        lambda policy: start_server(context, policy, log_name=f"fleet-{policy}.log"), context.console,
    )  # fmt: skip
    if chart := summary["shared_prefix"].get("chart"):
        summary["charts"][SHARED_PREFIX_CAPTION] = chart
    for name, location in summary["shared_prefix"].get("artifacts", {}).items():
        summary["artifacts"][f"shared_prefix_{name}"] = location
    return summary


def run_flywheel_stage(context: StageContext) -> dict[str, Any]:
    """Docs-QA traffic, corrections, one flywheel iteration and the champion measured again (flywheel_stage.py)."""
    from tokenworks.factory.flywheel_stage import run_flywheel_stage as run

    assert context.server is not None, "the pipeline starts the server before the flywheel stage"
    return run(context.config, context.checkpoint, SERVED_MODEL_NAME, context.server, context.console)


def run_plan_stage(context: StageContext) -> dict[str, Any]:
    """Profile, validate against the bench stage's sweep, and the workload's cost per GPU (plan_stage.py)."""
    from tokenworks.factory.plan_stage import run_plan_stage as run

    if not context.config.plan.enabled:
        return {"skipped": "[plan] enabled = false"}
    with ExitStack() as own:  # the probe measures the fleet the bench stage measured, up since the flywheel's
        server = context.server
        if server is None:  # resumed at plan: that fleet again, for this stage only
            server = own.enter_context(start_server(context))
        elif not server.running:
            server.start()
        return run(context.config, context.checkpoint, context.workdir, server, SERVED_MODEL_NAME, context.console)


def run_report_stage(context: StageContext) -> dict[str, Any]:
    from tokenworks.factory.report import write_report

    path = write_report(context.config, context.summaries)
    return {"artifacts": {"report": str(path)}}


STAGE_RUNNERS = {
    "ingest": run_ingest_stage,
    "train": run_train_stage,
    "serve": run_serve_stage,
    "bench": run_bench_stage,
    "flywheel": run_flywheel_stage,
    "plan": run_plan_stage,
    "report": run_report_stage,
}
