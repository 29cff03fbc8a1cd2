"""`tokenworks model ...`: look inside a checkpoint and generate from it."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

model_app = typer.Typer(help="Inspect Hugging Face model directories and generate from them.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(model_app, name="model")


@model_app.command("info")
def info(model_dir: Path = typer.Argument(..., help="A Hugging Face model directory.")) -> None:
    """Print a checkpoint's architecture, shape and tokenizer."""
    from tokenworks.model.config import ModelConfig
    from tokenworks.model.tokenizer import Tokenizer

    config = ModelConfig.load(model_dir)
    table = Table(title=str(model_dir), show_header=False)
    table.add_row("architecture", config.architecture)
    table.add_row("parameters", f"{config.num_parameters():,}")
    table.add_row("layers x hidden", f"{config.num_hidden_layers} x {config.hidden_size}")
    table.add_row("heads (query / key-value)", f"{config.num_attention_heads} / {config.num_key_value_heads}")
    table.add_row("vocabulary", f"{config.vocab_size:,}")
    table.add_row("context", f"{config.max_position_embeddings:,}")
    table.add_row("dtype", config.dtype)
    if (model_dir / "tokenizer.json").is_file():
        tokenizer = Tokenizer.load(model_dir)
        table.add_row("tokenizer vocabulary", f"{tokenizer.vocab_size:,}")
        table.add_row("chat template", "yes" if tokenizer.chat_template else "no")
    Console().print(table)


@model_app.command("generate")
def generate(
    model_dir: Path = typer.Argument(..., help="A Hugging Face model directory with a tokenizer."),
    prompt: str = typer.Option("The Python language", "--prompt", "-p", help="Text to continue."),
    max_tokens: int = typer.Option(32, "--max-tokens", min=1, help="Tokens to generate at most."),
    temperature: float = typer.Option(0.0, "--temperature", min=0.0, help="0 is greedy."),
    seed: int = typer.Option(0, "--seed", help="Sampling seed."),
) -> None:
    """Continue a prompt with the plain forward pass (a reference path, not the engine)."""
    from tokenworks.model.checkpoint import load_model
    from tokenworks.model.generate import generate_tokens
    from tokenworks.model.tokenizer import Tokenizer

    if not prompt:
        raise typer.BadParameter("the prompt must not be empty", param_hint="--prompt")
    tokenizer = Tokenizer.load(model_dir)
    model = load_model(model_dir)
    detokenizer = tokenizer.detokenizer(skip_special_tokens=True)
    typer.echo(prompt, nl=False)
    tokens = generate_tokens(model, tokenizer.encode(prompt), max_tokens, temperature, model.config.eos_token_ids, seed)
    for token_id in tokens:
        typer.echo(detokenizer.push([token_id]), nl=False)
    typer.echo(detokenizer.flush())
