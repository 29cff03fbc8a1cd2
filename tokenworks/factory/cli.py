"""`tokenworks factory`: run the whole line with the embedded defaults and show what it made."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table


def register(app: typer.Typer) -> None:
    app.command("factory")(factory)


def factory(
    workdir: Path = typer.Option(Path("factory"), "--workdir", help="Where every artifact is written."),
    preset: str = typer.Option(None, "--preset", help="Model shape: nano, micro, tiny or small."),
    vocab_size: int = typer.Option(None, "--vocab-size", min=260, help="Tokenizer vocabulary size."),
    prompt: str = typer.Option("The Python language", "--prompt", help="Text the model continues at the end."),
    max_new_tokens: int = typer.Option(32, "--max-new-tokens", min=1, help="Length of that continuation."),
    quick: bool = typer.Option(False, "--quick", help="A few-second run: smallest model, part of the corpus."),
    seed: int = typer.Option(0, "--seed", help="Seed of the model's initial weights."),
) -> None:
    """Run the AI factory end to end on this machine, with no downloads."""
    from tokenworks.factory.pipeline import FactoryOptions, run_factory

    make = FactoryOptions.quick if quick else FactoryOptions
    overrides = {"preset": preset, "vocab_size": vocab_size}
    options = make(
        workdir=workdir,
        prompt=prompt,
        max_new_tokens=max_new_tokens,
        seed=seed,
        **{key: value for key, value in overrides.items() if value is not None},
    )
    console = Console()
    result = run_factory(options, step=_spinner(console))

    table = Table(title="tokenworks factory", show_header=False)
    table.add_row(
        "documents", f"{result.documents_read:,} read, {result.documents:,} kept ({result.characters:,} characters)"
    )
    table.add_row("tokenizer", f"byte-level BPE, {result.vocab_size:,} tokens")
    table.add_row(
        "corpus tokens", f"{result.corpus_tokens:,} ({result.characters / result.corpus_tokens:.2f} chars/token)"
    )
    table.add_row("model", f"{options.preset}, {result.parameters:,} parameters (untrained)")
    table.add_row("data", f"{options.workdir / 'data'} (shards, tokenizer, rejected/, manifest.json)")
    table.add_row("checkpoint", str(result.checkpoint))
    table.add_row("time", ", ".join(f"{name} {seconds:.1f}s" for name, seconds in result.seconds.items()))
    console.print(table)
    console.print("[bold]Continuation[/] (greedy, from the saved checkpoint):")
    console.print(f"[dim]{result.prompt}[/]{result.continuation}", highlight=False, markup=True)


def _spinner(console: Console):
    @contextmanager
    def step(description: str) -> Iterator[None]:
        with console.status(description):
            yield
        console.print(f"[green]✓[/] {description}")

    return step
