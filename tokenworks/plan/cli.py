"""`tokenworks plan ...`: the `plan` sub-app and its commands.

One Typer app, `plan_app`. A command is a function here decorated with `@plan_app.command()`, or
one in a module of its own that this module adds to `plan_app` (an `add_<command>(app)` call
below the app). Each imports its heavy parts (torch, the engine) inside itself, so `tokenworks
--help` stays fast. `register(app)` adds the sub-app to the `tokenworks` command.
"""

from __future__ import annotations

import os
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from tokenworks.plan.fleet_cli import add_fleet
from tokenworks.plan.simulate_cli import add_simulate
from tokenworks.plan.validate_cli import add_validate

plan_app = typer.Typer(
    help="Predict cost per token and latency for a fleet: profile this machine, simulate, validate.",
    no_args_is_help=True,
)
add_simulate(plan_app)  # `plan simulate` (simulate_cli.py)
add_fleet(plan_app)  # `plan fleet` (fleet_cli.py)
add_validate(plan_app)  # `plan validate` (validate_cli.py)


def register(app: typer.Typer) -> None:
    app.add_typer(plan_app, name="plan")


@plan_app.command()
def profile(
    model_dir: Path = typer.Argument(..., help="The checkpoint directory whose steps to time."),
    threads: int = typer.Option(None, "--threads", min=1, help="Torch threads of the engine; default: torch's."),
    out: Path = typer.Option(Path("profile.json"), "--out", dir_okay=False, help="Where to write the profile."),
    quick: bool = typer.Option(False, "--quick", help="A small grid and 3 repeats: well under a minute."),
) -> None:
    """Time the engine's steps on this machine over a grid of shapes (prefill, decode, mixed),
    measure matmul FLOP/s and memory bandwidth, write profile.json and print the fitted model's error."""
    from tokenworks.engine.async_llm import SERVING_OMP_SPIN_COUNT
    from tokenworks.model.config import ModelConfig

    ModelConfig.load(model_dir)  # a clear error for a wrong directory, before torch loads
    out.parent.mkdir(parents=True, exist_ok=True)  # now, not after minutes of measuring
    # Set before OpenMP starts (torch's import): the engine's threads wait as they do when serving.
    os.environ.setdefault("GOMP_SPINCOUNT", str(SERVING_OMP_SPIN_COUNT))
    from tokenworks.plan.latency import FittedLatency
    from tokenworks.plan.profile import run_profile

    console = Console(stderr=True)
    columns = (
        TextColumn("[bold]profile[/]"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}"),
        TimeElapsedColumn(),
    )  # fmt: skip
    with Progress(*columns, console=console) as bar:
        task = bar.add_task("loading the model, measuring matmul and bandwidth", total=None)

        def on_start(points: int):
            bar.update(task, total=points, description="warming up")
            return advance

        def advance(name: str, added: int = 0) -> None:
            if added:  # retakes: more points to come
                bar.update(task, total=bar.tasks[0].total + added)
            else:
                bar.update(task, advance=1, description=name)

        measured = run_profile(model_dir, threads, quick, on_start)
    measured.save(out)
    fitted = FittedLatency.fit(measured)
    _summary(measured, fitted, out)


def _summary(measured, fitted, out: Path) -> None:
    table = Table(title="tokenworks plan profile", show_header=False)
    machine = measured.machine
    table.add_row("machine", f"{machine['cpu']}, {machine['cores']} cores, {machine['threads']} threads")
    flops = ", ".join(f"{k} {v / 1e9:,.1f}" for k, v in measured.matmul_flops.items() if v)
    table.add_row("matmul GFLOP/s", flops)
    table.add_row("bandwidth GB/s", ", ".join(f"{k} {v / 1e9:,.1f}" for k, v in measured.bandwidth.items()))
    table.add_row("steps", f"{len(measured.samples)} grid points in {measured.seconds:.1f} s")
    table.add_row("fitted", fitted.describe())
    error = fitted.error
    table.add_row("fit error", f"median {error.median:.1%}, max {error.max:.1%} over {error.samples} samples")
    table.add_row("written", str(out))
    Console().print(table)
