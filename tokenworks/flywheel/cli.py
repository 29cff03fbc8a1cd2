"""`tokenworks flywheel ...`: the request log from the command line (flag, log export)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

flywheel_app = typer.Typer(help="The flywheel: served traffic logged, flagged and exported.", no_args_is_help=True)
log_app = typer.Typer(help="The request log that `tokenworks serve --log-db` writes.", no_args_is_help=True)
flywheel_app.add_typer(log_app, name="log")

DB_OPTION = typer.Option(..., "--db", dir_okay=False, help="The request log (`tokenworks serve --log-db PATH`).")


def register(app: typer.Typer) -> None:
    app.add_typer(flywheel_app, name="flywheel")


@flywheel_app.command("flag")
def flag(
    db: Path = DB_OPTION,
    teacher: str = typer.Option(
        None, "--teacher", help="An OpenAI-compatible base URL: flag answers that disagree with its greedy ones."
    ),
    teacher_model: str = typer.Option(None, "--teacher-model", help="The teacher's model; default: its first."),
    teacher_api_key: str = typer.Option(None, "--teacher-api-key", envvar="TOKENWORKS_TEACHER_API_KEY"),
    min_mean_logprob: float = typer.Option(-2.5, "--min-mean-logprob", help="Flag a mean output logprob below this."),
    max_repeated_share: float = typer.Option(
        0.5, "--max-repeated-share", min=0, max=1, help="Flag answers whose repeated n-gram share is over this."
    ),
    repetition_ngram: int = typer.Option(3, "--repetition-ngram", min=1, help="Words per n-gram of that rule."),
    ttft_slo: float = typer.Option(1.0, "--ttft-slo", min=0, help="Seconds: flag a slower first token."),
    tpot_slo: float = typer.Option(0.1, "--tpot-slo", min=0, help="Seconds: flag slower output tokens."),
    negative_rating_below: float = typer.Option(
        0.0, "--negative-rating-below", help="A rating under this is negative."
    ),
    min_teacher_overlap: float = typer.Option(
        0.5, "--min-teacher-overlap", min=0, max=1, help="Word-overlap F1 with the teacher under this: a disagreement."
    ),
) -> None:
    """Flag the logged requests not yet looked at (and those with new feedback), each flag with its reason."""
    from tokenworks.flywheel.flagging import flag_requests
    from tokenworks.flywheel.flags import RULES, FlagConfig
    from tokenworks.flywheel.teacher import Teacher

    config = FlagConfig(
        min_mean_logprob=min_mean_logprob, repetition_ngram=repetition_ngram, max_repeated_share=max_repeated_share,
        ttft_slo_s=ttft_slo, tpot_slo_s=tpot_slo, negative_rating_below=negative_rating_below,
        min_teacher_overlap=min_teacher_overlap,
    )  # fmt: skip
    asker = Teacher(teacher, teacher_model, teacher_api_key) if teacher else None
    looked_at, counts = flag_requests(db, config, asker)
    table = Table(title=f"flags of {looked_at} requests in {db}")
    table.add_column("rule")
    table.add_column("flagged", justify="right")
    for rule in RULES:
        if rule != "teacher" or asker is not None:
            table.add_row(rule, str(counts.get(rule, 0)))
    Console().print(table)


@log_app.command("export")
def export(
    db: Path = DB_OPTION,
    format: str = typer.Option("jsonl", "--format", help="jsonl or parquet."),
    out: Path = typer.Option(..., "--out", dir_okay=False, help="The file to write."),
) -> None:
    """Write every logged request (with its feedback and flags) to a JSON Lines or Parquet file."""
    from tokenworks.flywheel.export import export_log

    count = export_log(db, out, format)
    Console(stderr=True).print(f"{count} requests -> {out}")


@flywheel_app.command("run")
def run(
    config_path: Path = typer.Option(None, "--config", dir_okay=False, help="A TOML file of settings (see docs)."),
    db: Path = typer.Option(None, "--db", dir_okay=False, help="The request log; default: the config's."),
    registry: Path = typer.Option(None, "--registry", dir_okay=False, envvar="TOKENWORKS_REGISTRY"),
    url: str = typer.Option(None, "--serve", help="The serving endpoint (server or router) to judge and swap on."),
    served_name: str = typer.Option(None, "--served-name", help="The adapter name clients ask for."),
    base: Path = typer.Option(None, "--base", help="The served base checkpoint (the first champion)."),
    data: Path = typer.Option(None, "--data", help="The ingest output: its validation split is the general set."),
    references: list[Path] = typer.Option(None, "--references", help="JSONL of {prompt, reference}; repeatable."),
    hard_eval: Path = typer.Option(None, "--hard-eval", help="The frozen hard-eval set (JSONL of prompt, reference)."),
    workdir: Path = typer.Option(None, "--workdir", help="Where iterations are written; default: the config's."),
    watch: bool = typer.Option(False, "--watch", help="Run an iteration whenever enough new flagged requests arrive."),
    min_flagged: int = typer.Option(None, "--min-flagged", min=1, help="With --watch: flagged requests per iteration."),
) -> None:
    """One flywheel iteration: collect, flag, build, train, evaluate, gate, promote or refuse (--watch: repeatedly)."""
    from dataclasses import replace

    from tokenworks.flywheel.loop import run_iteration
    from tokenworks.flywheel.loop import watch as watch_log
    from tokenworks.flywheel.loop_config import FlywheelConfig
    from tokenworks.flywheel.loop_report import headline
    from tokenworks.flywheel.run_view import RunView

    config = FlywheelConfig.load(config_path) if config_path else FlywheelConfig()
    top = {"log_db": db, "registry": registry, "workdir": workdir}
    config = replace(config, **{key: value for key, value in top.items() if value is not None})
    sections = {
        "serve": {"url": url, "served_name": served_name}, "train": {"base": base}, "evaluate": {"data": data},
        "labels": {"references": tuple(references) if references else None}, "dataset": {"hard_eval": hard_eval},
        "watch": {"min_flagged": min_flagged},
    }  # fmt: skip
    for name, values in sections.items():
        given = {key: value for key, value in values.items() if value is not None}
        if given:
            config = replace(config, **{name: replace(getattr(config, name), **given)})
    console = Console()
    with RunView() as view:
        if watch:

            def report(result) -> None:
                console.print(f"{headline(result.figures)}: {result.report_md}")
                view.reset()

            watch_log(config, view, on_result=report)
            return
        result = run_iteration(config, view)
    console.print(f"{headline(result.figures)}\nreport: {result.report_md} and {result.report_json.name}")
