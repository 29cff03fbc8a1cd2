"""`tokenworks plan simulate`: the benchmark's workload and load options, answered by the simulator.

It takes every workload and load option of `tokenworks bench run` (the same Typer options), the
serving side (replicas, router policy, the engine's scheduling settings) and a machine profile,
and writes the same results directory and report as `tokenworks bench`, labelled simulated. When
the profile holds a calibration (`plan validate` writes one: calibrate.py), the exact mode adds
what it measured outside the engine's steps, so a simulation of this host predicts what its
clients see; `--engine-only` leaves it out.
"""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path

import typer
from rich.console import Console

from tokenworks.bench import cli as bench  # the same workload and load options, help and defaults


def add_simulate(app: typer.Typer) -> None:
    app.command("simulate")(simulate)


def simulate(
    model_dir: Path = typer.Argument(..., help="The model's checkpoint directory (its config and tokenizer)."),
    profile: Path = typer.Option(..., "--profile", help="profile.json from `tokenworks plan profile MODEL_DIR`."),
    api: str = bench.API, workload: str = bench.WORKLOAD, input_tokens: str = bench.INPUT_TOKENS,
    output_tokens: str = bench.OUTPUT_TOKENS, num_prefixes: int = bench.NUM_PREFIXES,
    questions_per_prefix: int = bench.QUESTIONS, prefix_tokens: int = bench.PREFIX_TOKENS,
    sessions: int = bench.SESSIONS, turns: int = bench.TURNS, input_file: Path = bench.INPUT_FILE,
    temperature: float = bench.TEMPERATURE,
    concurrency: str = typer.Option(None, "--concurrency", help="Closed loop: requests in flight; comma-separated "
                                    "levels for several points (open loop: one cap)."),
    request_rate: str = typer.Option(None, "--request-rate", help="Open loop: requests per second (comma-separated: "
                                     "several points)."),
    arrival: str = bench.ARRIVAL, burstiness: float = bench.BURSTINESS,
    num_requests: int = typer.Option(None, "--num-requests", help="Measured requests per point (default: 64 unless "
                                     "--duration)."),
    duration: float = bench.DURATION, warmup_requests: int = bench.WARMUP, timeout: float = bench.TIMEOUT,
    seed: int = bench.SEED, slo: str = bench.SLO_OPTION, hardware: str = bench.HARDWARE, devices: float = bench.DEVICES,
    device_label: str = bench.DEVICE_LABEL, price_book: Path = bench.PRICE_BOOK,
    replicas: int = typer.Option(1, "--replicas", help="Engine replicas (several: behind the router)."),
    router_policy: str = typer.Option("kv", "--router-policy", help="The router's policy between replicas: kv, "
                                      "round-robin, least-load, p2c or session."),
    block_size: int = typer.Option(None, "--block-size", help="KV block tokens (default: the profile's engine's)."),
    num_kv_blocks: int = typer.Option(None, "--num-kv-blocks", help="KV blocks per replica (default: as the engine "
                                      "sizes its cache on this host)."),
    kv_cache_memory_gib: float = typer.Option(None, "--kv-cache-memory-gib", help="KV cache per replica, GiB."),
    max_num_batched_tokens: int = typer.Option(2048, "--max-num-batched-tokens", help="Tokens per step at most."),
    max_num_seqs: int = typer.Option(256, "--max-num-seqs", help="Requests running at once per replica."),
    max_model_len: int = typer.Option(None, "--max-model-len", help="Context length (default: the model's)."),
    no_prefix_caching: bool = typer.Option(False, "--no-prefix-caching", help="Replicas without prefix caching."),
    calibration: bool = typer.Option(True, "--calibration/--engine-only", help="Add the serving time the profile's "
                                     "calibration measured outside the engine's steps on this host (`plan validate` "
                                     "writes it: each request's way in, the serving loop's time a step and a token, "
                                     "the host's speed), when it has one; or simulate the engine's steps alone."),
    arrival_delay_ms: float = typer.Option(None, "--arrival-delay-ms", help="From a send to the engine having the "
                                           "request (HTTP, tokenization, the engine client); not in step times "
                                           "(default: the calibration's, drawn per request, else 0)."),
    delivery_delay_ms: float = typer.Option(None, "--delivery-delay-ms", help="From a step's end to the client "
                                            "reading its tokens (detokenization, the stream; default: the "
                                            "calibration's, else 0)."),
    replay: Path = typer.Option(None, "--replay", help="Send a recorded run again at its recorded times and token "
                                "counts, instead of the workload: a `tokenworks bench` requests.jsonl, or a "
                                "server's request log (`tokenworks serve --log-db`: its prompts too)."),
    replay_point: str = typer.Option(None, "--replay-point", help="Which point of that log (when it has several)."),
    out: Path = typer.Option(Path("plan-results"), "--out", "-o", help="The results directory."),
    mode: str = typer.Option("exact", "--mode", help="exact: the engine's own scheduler, request by request; fast: "
                             "batch totals and closed-form decode runs (fast.py), one replica."),
) -> None:  # fmt: skip
    """Simulate a workload at one or more load levels; the bench's results directory, labelled simulated."""
    from tokenworks.bench.loadgen import LoadOptions
    from tokenworks.bench.runner import Accounting
    from tokenworks.bench.slo import SLO
    from tokenworks.bench.workloads import WorkloadOptions
    from tokenworks.errors import PlanError
    from tokenworks.model.config import ModelConfig
    from tokenworks.plan.calibrate import Serving, read_serving
    from tokenworks.plan.fast_cli import check_fast, simulate_fast
    from tokenworks.plan.latency import FittedLatency
    from tokenworks.plan.profiles import Profile
    from tokenworks.plan.prompts import SimPrompts
    from tokenworks.plan.results import simulated_point, write_simulated
    from tokenworks.plan.simulate import Fleet, check_fleet, levels, replica_config, simulate_levels, simulate_replay

    options = WorkloadOptions(
        kind=workload, api=api, input_tokens=input_tokens, output_tokens=output_tokens, num_prefixes=num_prefixes,
        questions_per_prefix=questions_per_prefix, prefix_tokens=prefix_tokens, sessions=sessions, turns=turns,
        input_file=input_file, temperature=temperature,
    )  # fmt: skip
    options.validate()
    check_fleet(replicas, router_policy, arrival_delay_ms or 0.0, delivery_delay_ms or 0.0)
    concurrencies = bench._numbers(concurrency, int, "--concurrency") if concurrency else []
    rates = bench._numbers(request_rate, float, "--request-rate") if request_rate else None
    if not concurrencies and not rates:
        concurrencies = [1]
    if num_requests is None and duration is None:
        num_requests = 64
    base = LoadOptions(
        arrival=arrival, burstiness=burstiness, num_requests=num_requests, duration=duration,
        warmup_requests=warmup_requests, timeout=timeout, seed=seed,
    )  # fmt: skip
    points = levels(concurrencies, rates)
    for point_concurrency, rate in points:
        LoadOptions(**{**_fields(base), "concurrency": point_concurrency, "request_rate": rate}).validate()
    objective = SLO.parse(slo) if slo else None
    accounting = Accounting(hardware=hardware, devices=devices, device_label=device_label, price_book=price_book)
    book = accounting.book()
    book.get(hardware)  # an unknown hardware name fails before any work

    config = ModelConfig.load(model_dir)
    measured = Profile.load(profile)
    measured.check_model(config, f"the profile {profile}")
    latency = FittedLatency.from_profile(measured)
    engine = replica_config(
        config, block_size or int(measured.engine.get("block_size", 128)), num_kv_blocks, kv_cache_memory_gib,
        max_num_batched_tokens, max_num_seqs, max_model_len, not no_prefix_caching,
    )  # fmt: skip
    if mode not in ("exact", "fast"):
        raise PlanError(f"--mode is exact or fast, got {mode!r}")
    if mode == "fast" and (arrival_delay_ms is not None or delivery_delay_ms is not None):
        raise PlanError("--mode fast simulates the engine's steps alone; --arrival-delay-ms and --delivery-delay-ms "
                        "need --mode exact")  # fmt: skip
    console = Console()
    serving = read_serving(profile) if calibration else None
    if serving is not None and mode == "fast":
        console.print("[dim]--mode fast simulates the engine's steps alone: the profile's calibration is left out "
                      "(--mode exact adds it)[/]")  # fmt: skip
        serving = None
    if serving is not None:
        console.print(f"[dim]the profile's calibration ({serving.source}): {serving.describe()}[/]")
    delays = {"arrival_delay": arrival_delay_ms, "delivery_delay": delivery_delay_ms}
    serving = replace(serving or Serving(), **{key: ms / 1e3 for key, ms in delays.items() if ms is not None})
    drawn = arrival_delay_ms is None  # the measured way-ins, unless a delay was given by hand
    fleet = serving.serve(Fleet(engine, latency, replicas, router_policy, seed=seed), draw_way_ins=drawn)
    prompts = SimPrompts.load(model_dir, seed)
    if mode == "fast":
        check_fast(replicas, replay, base)
        runs = simulate_fast(fleet, prompts, options, base, points, seed)
    elif replay is not None:
        runs = [simulate_replay(fleet, prompts, replay, replay_point, base)]
        if runs[0].left_out:
            left_out = ", ".join(f"{count} {reason}" for reason, count in runs[0].left_out.items())
            console.print(f"[yellow]left out of the replay[/]: {left_out}", highlight=False)
    else:
        runs = simulate_levels(
            fleet, prompts, options, base, points, seed,
            on_point=lambda run: console.print(
                f"[dim]{run.label}: {run.stats.end:,.1f} simulated s in {run.stats.wall_seconds:,.2f} s[/]"
            ),
        )  # fmt: skip
    simulated = [
        simulated_point(run.records, run.stats, options, run.load, objective, accounting, book, run.label)
        for run in runs
    ]
    simulation = {
        "model_dir": str(model_dir), "profile": str(profile), "latency": type(latency).__name__,
        "replicas": replicas, "router_policy": router_policy if replicas > 1 else None,
        "engine": _fields(engine), "replay": str(replay) if replay is not None else None, "mode": mode,
        "replay_left_out": runs[0].left_out if replay is not None else None,
    } | serving.as_simulated(draw_way_ins=drawn)  # fmt: skip
    command = "tokenworks plan simulate"
    files = write_simulated(out, simulated, model_dir.name, options, base, objective, accounting, command, simulation,
                            engine.max_model_len)  # fmt: skip
    table = bench.results_table(files.rows, {row["label"] for row in files.frontiers["throughput"]})
    table.title = "tokenworks plan simulate (simulated)"
    console.print(table)
    for entry in simulated:
        for flag in entry.point.flags:
            color = "red" if flag.severity == "error" else "yellow"
            console.print(f"[{color}]{flag.severity}[/] {entry.point.label}: {flag.message}", highlight=False)
    console.print(
        f"Simulated results in [bold]{out}[/]: run.json, requests.jsonl, points.csv, frontier.csv, report.html"
    )


def _fields(instance: object) -> dict:
    return asdict(instance)
