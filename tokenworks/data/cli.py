"""`tokenworks ingest`: the data stage on the command line, with progress and a summary."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.progress import Progress as RichProgressBars
from rich.table import Table


def register(app: typer.Typer) -> None:
    app.command("ingest")(ingest)


def ingest(
    sources: list[str] = typer.Argument(None, help="Directories, globs or files; default: python-docs."),
    out: Path = typer.Option(Path("data"), "--out", "-o", help="Output directory."),
    workers: int = typer.Option(os.cpu_count() or 1, "--workers", min=1, help="Worker processes (or Ray CPUs)."),
    executor: str = typer.Option("local", "--executor", help="local (processes on this machine) or ray (Ray Data)."),
    text_field: str = typer.Option("text", "--text-field", help="Text field of JSONL objects and parquet rows."),
    id_field: str = typer.Option("id", "--id-field", help="Id field of JSONL objects and parquet rows."),
    html_extractor: str = typer.Option(
        "trafilatura", "--html-extractor", help="Main content of HTML pages: trafilatura or resiliparse (faster)."
    ),
    limit: int = typer.Option(None, "--limit", min=1, help="Keep only the first N documents read."),
    quality: list[str] = typer.Option([], "--quality", help="Threshold for every source: NAME=VALUE (or NAME=none)."),
    source_quality: list[str] = typer.Option(
        [], "--source-quality", help="Threshold for one source: SOURCE:NAME=VALUE."
    ),
    no_quality: bool = typer.Option(False, "--no-quality", help="Skip the quality filters."),
    no_pii: bool = typer.Option(False, "--no-pii", help="Keep e-mail addresses, phone numbers and IPs."),
    languages: str = typer.Option(
        None, "--languages", help="Keep only documents in these languages (ISO 639 codes), e.g. en,de."
    ),
    no_exact_dedup: bool = typer.Option(False, "--no-exact-dedup", help="Skip exact deduplication."),
    no_near_dedup: bool = typer.Option(False, "--no-near-dedup", help="Skip MinHash near-deduplication."),
    shingle_words: int = typer.Option(5, "--shingle-words", min=1, help="Words per MinHash shingle."),
    bands: int = typer.Option(20, "--minhash-bands", min=1, help="LSH bands."),
    rows: int = typer.Option(5, "--minhash-rows", min=1, help="MinHash rows per band."),
    jaccard: float = typer.Option(0.8, "--jaccard", help="Jaccard similarity at which documents are near-duplicates."),
    validation_fraction: float = typer.Option(0.05, "--validation-fraction", help="Share of documents held out."),
    seed: int = typer.Option(0, "--seed", help="Seed of the train/validation split."),
    vocab_size: int = typer.Option(8192, "--vocab-size", min=260, help="Vocabulary of the tokenizer to train."),
    tokenizer: Path = typer.Option(None, "--tokenizer", help="Use this tokenizer.json (or model directory) instead."),
    shard_tokens: int = typer.Option(50_000_000, "--shard-tokens", min=1, help="Tokens per shard, at most about."),
) -> None:
    """Turn documents into curated, deduplicated, tokenized shards."""
    from tokenworks.data.minhash import MinHashParameters
    from tokenworks.data.pipeline import IngestOptions, run_ingest

    options = IngestOptions(
        out=out,
        workers=workers,
        executor=executor,
        text_field=text_field,
        id_field=id_field,
        html_extractor=html_extractor,
        limit=limit,
        quality=not no_quality,
        quality_overrides=dict(_assignment(item, "--quality") for item in quality),
        redact_pii=not no_pii,
        languages=[code.strip() for code in languages.split(",") if code.strip()] if languages is not None else None,
        exact_dedup=not no_exact_dedup,
        near_dedup=not no_near_dedup,
        minhash=MinHashParameters(shingle_words=shingle_words, bands=bands, rows=rows, jaccard_threshold=jaccard),
        validation_fraction=validation_fraction,
        seed=seed,
        vocab_size=vocab_size,
        tokenizer=tokenizer,
        shard_tokens=shard_tokens,
    )
    if sources:
        options.sources = list(sources)
    for item in source_quality:
        source, separator, assignment = item.rpartition(":")
        if not separator or not source:
            raise typer.BadParameter(f"{item!r} is not SOURCE:NAME=VALUE", param_hint="--source-quality")
        name, value = _assignment(assignment, "--source-quality")
        options.source_quality.setdefault(source, {})[name] = value

    console = Console()
    with ingest_bars(console) as bars:
        result = run_ingest(options, RichIngestProgress(bars))
    console.print(_summary(result))
    kept = next((s.languages for s in result.stages if s.languages), None)
    if kept:
        console.print("Languages kept: " + ", ".join(f"{name} {count:,}" for name, count in kept.items()))
    console.print(f"Output in [bold]{result.out}[/]: shards/, tokenizer/, rejected/, stats.json, manifest.json")


def _assignment(item: str, option: str) -> tuple[str, str]:
    name, separator, value = item.partition("=")
    if not separator or not name or not value:
        raise typer.BadParameter(f"{item!r} is not NAME=VALUE", param_hint=option)
    return name.strip(), value.strip()


def ingest_bars(console: Console) -> RichProgressBars:
    return RichProgressBars(
        SpinnerColumn(), TextColumn("{task.description:<10}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=console, transient=False,
    )  # fmt: skip


class RichIngestProgress:
    """Ingest progress as rich bars, one per pipeline stage (also used by `tokenworks factory`)."""

    def __init__(self, bars: RichProgressBars) -> None:
        self.bars = bars

    @contextmanager
    def stage(self, name: str, total: int | None) -> Iterator[Callable[[int], None]]:
        task = self.bars.add_task(name, total=total)
        yield lambda n: self.bars.advance(task, n)
        self.bars.update(task, total=total or 1, completed=total or 1)


def _summary(result) -> Table:
    table = Table(title="tokenworks ingest")
    for column in ("stage", "in", "out", "dropped (by step) or moved", "characters", "tokens", "seconds"):
        table.add_column(column, justify="left" if column in ("stage", "dropped (by step) or moved") else "right")
    for s in result.stages:
        dropped = ", ".join(f"{name} {count:,}" for name, count in s.dropped.items() if count) or "-"
        seconds = "resumed" if s.resumed else f"{s.seconds:.1f}"
        tokens = f"{s.tokens_out:,}" if s.tokens_out is not None else ""
        table.add_row(
            s.stage, f"{s.documents_in:,}", f"{s.documents_out:,}", dropped, f"{s.characters_out:,}", tokens, seconds
        )
    return table
