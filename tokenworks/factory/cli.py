"""`tokenworks factory`: run the whole line with the embedded defaults (or a factory.toml) and report."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.console import Console

from tokenworks.factory.config import STAGES


def register(app: typer.Typer) -> None:
    app.command("factory")(factory)


def factory(
    workdir: Path = typer.Option(None, "--workdir", help="Where every artifact is written (default: ./factory)."),
    config_file: Path = typer.Option(None, "--config", help="A factory.toml with your data, model, SLOs and prices."),
    quick: bool = typer.Option(False, "--quick", help="The whole line in about a minute: less of everything."),
    start: str = typer.Option(None, "--from", help=f"Re-run from this stage: {', '.join(STAGES)}."),
    keep_serving: bool = typer.Option(
        False, "--keep-serving", help="Keep the server (and its /dashboard) up after the sweep until Ctrl-C."
    ),
) -> None:
    """Run the AI factory end to end on this machine: ingest, train, serve, bench, report."""
    from tokenworks.factory.config import FactoryConfig
    from tokenworks.factory.pipeline import run_factory
    from tokenworks.factory.report import console_summary

    if config_file is not None:
        config = FactoryConfig.load(config_file, quick=quick, workdir=workdir)
    else:
        config = FactoryConfig.quick() if quick else FactoryConfig()
        config.workdir = workdir or config.workdir
    console = Console()

    def announce(stage: str, resumed: bool) -> None:
        if resumed:
            console.print(f"[dim]✓ {stage}: done earlier, kept[/]")
        else:
            console.rule(f"[bold]{stage}")

    def wait_for_ctrl_c(url: str) -> None:
        console.print(f"Serving at [bold]{url}[/]; dashboard at [bold]{url}/dashboard[/]. Ctrl-C to go on.")
        try:
            while True:
                time.sleep(1)
        except KeyboardInterrupt:
            pass

    run = run_factory(
        config, start=start, console=console, on_stage=announce, keep_serving=wait_for_ctrl_c if keep_serving else None
    )
    console.print(console_summary(config, run.summaries, run.seconds))
