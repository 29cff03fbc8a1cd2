"""`tokenworks plan validate`: a measured sweep and its simulation side by side, the error per metric and point.

The measured side is a `tokenworks bench` results directory (--measured), repeats of one sweep
(--measured given once a repeat: each figure the repeats' median, validation.py), or a sweep this
command runs now with the bench's own code (--url). The simulated side sends the same workload,
seed, warmup and request counts at the same levels, through replicas configured as given, with
the server's time outside the engine calibrated (calibrate.py), --simulations times with other
draws of the measured per-request times and host speeds, each figure their median. It writes the
simulated results directories, validation.json (every cell and the median absolute errors) and
validation.png.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from tokenworks.bench import cli as bench  # the same workload and load options, help and defaults


def add_validate(app: typer.Typer) -> None:
    app.command("validate")(validate)


def validate(
    model_dir: Path = typer.Argument(..., help="The served model's checkpoint directory (its config and tokenizer)."),
    profile: Path = typer.Option(..., "--profile", help="profile.json from `tokenworks plan profile MODEL_DIR`."),
    measured: list[Path] = typer.Option(None, "--measured", help="A `tokenworks bench sweep`/`run` results "
                                        "directory; again for each repeat of the sweep (compared: their medians)."),
    url: str = typer.Option(None, "--url", help="Measure a sweep of this endpoint now (instead of --measured)."),
    api: str = bench.API, workload: str = bench.WORKLOAD, input_tokens: str = bench.INPUT_TOKENS,
    output_tokens: str = bench.OUTPUT_TOKENS, num_prefixes: int = bench.NUM_PREFIXES,
    questions_per_prefix: int = bench.QUESTIONS, prefix_tokens: int = bench.PREFIX_TOKENS,
    sessions: int = bench.SESSIONS, turns: int = bench.TURNS, input_file: Path = bench.INPUT_FILE,
    temperature: float = bench.TEMPERATURE,
    concurrency: str = typer.Option("1,2,4,8,16,32", "--concurrency", help="--url: closed-loop levels."),
    request_rate: str = typer.Option(None, "--request-rate", help="--url: open-loop rates instead."),
    requests_per_point: int = typer.Option(32, "--requests-per-point", help="--url: at least 2x the concurrency."),
    arrival: str = bench.ARRIVAL, burstiness: float = bench.BURSTINESS, warmup_requests: int = bench.WARMUP,
    seed: int = bench.SEED,
    replicas: int = typer.Option(1, "--replicas", help="Engine replicas measured (several: behind the router)."),
    router_policy: str = typer.Option("kv", "--router-policy", help="The router's policy between them."),
    block_size: int = typer.Option(None, "--block-size", help="KV block tokens, as served (default: the "
                                   "profile's engine's)."),
    num_kv_blocks: int = typer.Option(None, "--num-kv-blocks", help="KV blocks per replica, as served."),
    kv_cache_memory_gib: float = typer.Option(None, "--kv-cache-memory-gib", help="KV cache per replica, as served."),
    max_num_seqs: int = typer.Option(256, "--max-num-seqs", help="As served."),
    arrival_delay_ms: float = typer.Option(None, "--arrival-delay-ms", help="A request's way in (default: the "
                                           "profile's calibration, else calibrated on this sweep: calibrate.py)."),
    step_overhead_ms: float = typer.Option(None, "--step-overhead-ms", help="Serving time per engine step outside "
                                           "EngineCore.step() (default: as --arrival-delay-ms)."),
    token_overhead_ms: float = typer.Option(None, "--token-overhead-ms", help="Serving time per sampled token "
                                            "outside EngineCore.step() (default: as --arrival-delay-ms)."),
    way_in_cpu_ms: float = typer.Option(None, "--way-in-cpu-ms", help="CPU a request's way in costs its worker's "
                                        "core (the API server's and the router's CPU per request, measured apart); "
                                        "with it, way-ins delay the engine's steps (default: the profile's, else 0)."),
    request_cpu_ms: float = typer.Option(None, "--request-cpu-ms", help="CPU the engine core spends on a request "
                                         "outside its steps, measured apart (default: the profile's, else 0)."),
    router_cpu_ms: float = typer.Option(None, "--router-cpu-ms", help="CPU a request costs processes without a "
                                        "core of their own that run on the workers' (a router), measured apart "
                                        "(default: the profile's, else 0)."),
    stream_cpu_ms: float = typer.Option(None, "--stream-cpu-ms", help="CPU a streamed token costs processes "
                                        "without a core of their own that run on the workers' (a router, a load "
                                        "generator), measured apart (default: the profile's, else 0)."),
    simulations: int = typer.Option(3, "--simulations", help="Simulate the sweep this many times, each with other "
                                    "draws of the measured per-request times and host speeds, and compare each "
                                    "point's median (once when nothing is drawn)."),
    host_speed: bool = typer.Option(True, "--host-speed/--no-host-speed", help="Draw the host's speed measured "
                                    "at concurrency 1 a window at a time (host_speed.py), or simulate at one "
                                    "speed, the calibration's mean."),
    recalibrate: bool = typer.Option(False, "--recalibrate", help="Calibrate on this sweep (its closed-loop "
                                     "points, c=1 among them) even if the profile has a calibration; write it there."),
    out: Path = typer.Option(Path("plan-validation"), "--out", "-o", help="Where the results go."),
) -> None:  # fmt: skip
    """Measured against simulated, per metric and point: TTFT and TPOT p50/p99, output tokens/s, prefix hits."""
    from tokenworks.errors import PlanError
    from tokenworks.model.config import ModelConfig
    from tokenworks.plan.calibrate import read_serving
    from tokenworks.plan.profiles import Profile
    from tokenworks.plan.simulate import check_fleet
    from tokenworks.plan.validation import median_of, read_results

    if bool(measured) == (url is not None):
        raise PlanError("give one of --measured DIR (a bench results directory) or --url URL (measure one now)")
    if simulations < 1:
        raise PlanError(f"--simulations must be at least 1, got {simulations}")
    given = {"arrival_delay": arrival_delay_ms, "step_overhead": step_overhead_ms, "token_overhead": token_overhead_ms}
    cpu = {"way_in_cpu": way_in_cpu_ms, "request_cpu": request_cpu_ms, "router_cpu": router_cpu_ms,
           "stream_cpu": stream_cpu_ms}  # fmt: skip
    check_fleet(replicas, router_policy, *(value or 0.0 for value in (given | cpu).values()))
    config = ModelConfig.load(model_dir)
    measured_profile = Profile.load(profile)
    measured_profile.check_model(config, f"the profile {profile}")  # before minutes of measuring
    if not measured:
        options = bench._workload(api, workload, input_tokens, output_tokens, num_prefixes, questions_per_prefix,
                                  prefix_tokens, sessions, turns, input_file, temperature)  # fmt: skip
        measured = [_measure(url, model_dir, options, concurrency, request_rate, requests_per_point, arrival,
                             burstiness, warmup_requests, seed, out / "measured")]  # fmt: skip
    sweep = median_of([read_results(directory) for directory in measured])
    if sweep.simulated:
        raise PlanError(f"{sweep.directory} holds simulated results (plan simulate's); give a measured sweep")
    serving = None if recalibrate else read_serving(profile)
    engine = (block_size, num_kv_blocks, kv_cache_memory_gib, max_num_seqs)
    _run(model_dir, config, profile, measured_profile, sweep, serving, replicas, router_policy, engine, given, cpu,
         simulations, host_speed, out)  # fmt: skip


def _measure(url, model_dir, options, concurrency, request_rate, per_point, arrival, burstiness, warmup, seed, out):
    """A sweep now, with the bench's own code (exact prompt lengths from the model's tokenizer)."""
    import asyncio

    from tokenworks.bench.loadgen import LoadOptions
    from tokenworks.bench.runner import Accounting, Target
    from tokenworks.bench.sweep import SweepPlan, run_sweep

    options.validate()
    rates = bench._numbers(request_rate, float, "--request-rate") if request_rate else None
    levels = bench._numbers(concurrency, int, "--concurrency") if concurrency and not rates else []
    plan = SweepPlan(levels, rates, [(str(options.input_tokens), str(options.output_tokens))], per_point,
                     stop_when_saturated=False)  # fmt: skip
    load = LoadOptions(arrival=arrival, burstiness=burstiness, warmup_requests=warmup, seed=seed)
    target, accounting = Target(url, tokenizer=model_dir), Accounting()
    result = asyncio.run(run_sweep(target, options, load, plan, None, accounting, Console(stderr=True)))
    from tokenworks.bench.report import write_results

    write_results(out, result, options, load, None, accounting, "tokenworks plan validate --url")
    return out


def _run(model_dir, config, profile, measured_profile, sweep, serving, replicas, router_policy, served, given,
         cpu, simulations, host_speed, out) -> None:  # fmt: skip
    from dataclasses import replace

    from tokenworks.bench.runner import Accounting
    from tokenworks.plan.calibrate import Serving, write_serving
    from tokenworks.plan.latency import FittedLatency
    from tokenworks.plan.prompts import SimPrompts
    from tokenworks.plan.results import write_simulated
    from tokenworks.plan.simulate import Fleet, replica_config
    from tokenworks.plan.validate import calibrate, simulate_points
    from tokenworks.plan.validation import compare, median_of, read_results
    from tokenworks.plan.validation_plot import plot_validation

    console = Console()
    engine_latency = FittedLatency.from_profile(measured_profile)
    length = json.loads((sweep.directory / "run.json").read_text())["endpoint"].get("max_model_len")
    block_size, num_kv_blocks, kv_cache_memory_gib, max_num_seqs = served
    block_size = block_size or int(measured_profile.engine.get("block_size", 128))
    engine = replica_config(config, block_size, num_kv_blocks, kv_cache_memory_gib, max_num_seqs=max_num_seqs,
                            max_model_len=length)  # fmt: skip
    fleet = Fleet(engine, engine_latency, replicas, router_policy)
    prompts = SimPrompts.load(model_dir, sweep.load.seed)
    if None in given.values():
        if serving is None:
            measured_cpu = {key: value / 1e3 for key, value in cpu.items() if value is not None}
            serving = calibrate(replace(fleet, **measured_cpu), prompts, sweep)
            write_serving(profile, serving)
            console.print(f"[dim]calibrated on {', '.join(serving.points)}: {serving.describe()}; written into "
                          f"{profile}[/]")  # fmt: skip
        else:
            console.print(f"[dim]the profile's calibration ({serving.source}): {serving.describe()}[/]")
    serving = replace(serving or Serving(), **{k: v / 1e3 for k, v in given.items() if v is not None})
    serving = replace(serving, **{k: v / 1e3 for k, v in cpu.items() if v is not None})
    if not host_speed:
        serving = replace(serving, host_speed=(), speed_window=0.0)
    # The measured way-ins, drawn per request, unless a delay was given by hand.
    drawn = given["arrival_delay"] is None
    fleet = serving.serve(fleet, draw_way_ins=drawn)
    simulation = {
        "model_dir": str(model_dir), "profile": str(profile), "measured": str(sweep.directory),
        "replicas": replicas, "router_policy": router_policy if replicas > 1 else None,
    } | serving.as_simulated(draw_way_ins=drawn)  # fmt: skip
    # One simulation with drawn times is one sample of what the model predicts, as one measured
    # sweep is of the host: each point's figures the median of several, each with other draws.
    runs = simulations if fleet.draws else 1
    directories = [out / ("simulated" if k == 0 else f"simulated-{k + 1}") for k in range(runs)]
    for seed, directory in enumerate(directories):
        simulated = simulate_points(replace(fleet, seed=seed), prompts, sweep)
        write_simulated(directory, simulated, sweep.model, sweep.workload, sweep.load, None, Accounting(),
                        "tokenworks plan validate", simulation | {"seed": seed}, engine.max_model_len)  # fmt: skip
    validation = compare(sweep.points, median_of([read_results(directory) for directory in directories]).points)
    # The points the errors are not independent of: those calibrated on, when this sweep is the source.
    calibration = list(serving.points) if serving.source and Path(serving.source) == sweep.directory else []
    report = validation.to_json() | {"measured": str(sweep.directory), "repeats": [str(d) for d in sweep.repeats],
                                     "simulated": str(out / "simulated"),
                                     "simulations": [str(directory) for directory in directories],
                                     "simulation": simulation,
                                     "calibration_points": calibration}  # fmt: skip
    (out / "validation.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    plot_validation(validation, out / "validation.png", f"{sweep.model}: measured vs simulated")
    if len(sweep.repeats) > 1:
        console.print(f"[dim]measured: each figure the median of {len(sweep.repeats)} repeats of the sweep[/]")
    if len(directories) > 1:
        console.print(f"[dim]simulated: each figure the median of {len(directories)} simulations, other draws each[/]")
    console.print(validation_table(validation, calibration))
    console.print(f"Errors in [bold]{out / 'validation.json'}[/], chart {out / 'validation.png'}")


def validation_table(validation, calibration: list[str]) -> Table:
    """A row a point and metric (measured, simulated, error), a section a point, then the median
    |error| of each metric against its goal."""
    from tokenworks.plan.validation import METRICS

    table = Table(title="tokenworks plan validate: measured against simulated")
    for name, justify in (("point", "left"), ("metric", "left"), ("measured", "right"), ("simulated", "right"),
                          ("error", "right")):  # fmt: skip
        table.add_column(name, justify=justify)
    for point in validation.points:
        label = point.label + (" (calibration)" if point.label in calibration else "")
        for index, metric in enumerate(METRICS):
            cell = point.cells[metric.key]
            table.add_row(label if index == 0 else "", f"{metric.name} ({metric.unit})", _value(metric, cell.measured),
                          _value(metric, cell.simulated), _error(metric, cell.error))  # fmt: skip
        table.add_section()
    for index, metric in enumerate(METRICS):
        median, passes = validation.medians.get(metric.key), validation.passes(metric)
        goal = f"goal <= {_error(metric, metric.goal, signed=False)}"
        verdict = "n/a" if median is None else f"{'PASS' if passes else 'MISS'} ({goal})"
        table.add_row("median |error|" if index == 0 else "", metric.name, "", verdict,
                      _error(metric, median, signed=False))  # fmt: skip
    return table


def _value(metric, value: float | None) -> str:
    return "n/a" if value is None else f"{value * metric.scale:,.2f}"


def _error(metric, error: float | None, signed: bool = True) -> str:
    if error is None:
        return "n/a"
    sign = "+" if signed else ""
    return f"{error:{sign}.1f} pts" if metric.points else f"{error:{sign}.1%}"
