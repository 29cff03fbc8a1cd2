"""`tokenworks train` (pretraining), `tokenworks train sft` and `tokenworks train merge-lora`.

The same app runs as `python -m tokenworks.train` and under `torchrun -m tokenworks.train`,
so a data-parallel run takes exactly the arguments of a single-process one.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

train_app = typer.Typer(
    help="Pretrain a model on token shards, fine-tune one on chat data (full or LoRA), merge adapters.",
    invoke_without_command=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def register(app: typer.Typer) -> None:
    app.add_typer(train_app, name="train")


def _loop_options(
    out: Path, context: int, batch_size: int, grad_accum: int, max_steps: int | None, time_budget: str | None,
    stop_at_step: int | None, lr: float, min_lr_ratio: float, warmup: int, weight_decay: float, grad_clip: float,
    eval_interval: int, eval_tokens: int, save_interval: int, seed: int, device: str, dtype: str, resume: bool,
) -> Any:  # fmt: skip
    from tokenworks.train.config import LoopConfig, OptimConfig, parse_duration

    optim = OptimConfig(
        lr=lr, min_lr_ratio=min_lr_ratio, warmup_steps=warmup, weight_decay=weight_decay, grad_clip=grad_clip
    )
    return LoopConfig(
        out=out, context=context, batch_size=batch_size, grad_accum=grad_accum, max_steps=max_steps,
        time_budget_s=parse_duration(time_budget) if time_budget else None, stop_at_step=stop_at_step,
        eval_interval=eval_interval, eval_tokens=eval_tokens, save_interval=save_interval, seed=seed,
        device=device, dtype=dtype, resume=resume, optim=optim,
    )  # fmt: skip


# Options shared by pretraining and SFT (defaults differ where noted at the command).
OUT = typer.Option(..., "--out", "-o", help="Run directory: checkpoint/, run.json, metrics.jsonl, loss.png.")
MAX_STEPS = typer.Option(None, "--max-steps", min=1, help="Optimizer steps; the cosine schedule spans them.")
TIME_BUDGET = typer.Option(
    None, "--time-budget", help="Wall-clock budget (300, 90s, 5m, 1h): stop, evaluate, checkpoint. Default 5m "
    "when --max-steps is not given (pretraining).",
)  # fmt: skip
STOP_AT = typer.Option(
    None, "--stop-at-step", min=1, help="End this invocation at this step, checkpointed; --resume continues it."
)
GRAD_ACCUM = typer.Option(1, "--grad-accum", min=1, help="Micro-batches per optimizer step.")
MIN_LR = typer.Option(0.1, "--min-lr-ratio", help="The cosine decays to lr x this.")
WARMUP = typer.Option(20, "--warmup", min=0, help="Linear warmup steps.")
WEIGHT_DECAY = typer.Option(0.1, "--weight-decay", min=0.0, help="AdamW weight decay (matrices only).")
GRAD_CLIP = typer.Option(1.0, "--grad-clip", min=0.0, help="Clip the global gradient norm (0: off).")
EVAL_TOKENS = typer.Option(65_536, "--eval-tokens", min=1, help="Validation tokens per evaluation, at most.")
SAVE_INTERVAL = typer.Option(0, "--save-interval", min=0, help="Checkpoint every N steps (0: only at the end).")
SEED = typer.Option(0, "--seed", help="Seed of the weights, data order and dropout.")
DEVICE = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N.")
DTYPE = typer.Option(
    "auto", "--dtype", help="auto (bf16 autocast on GPUs that have it, else float32), float32, bfloat16."
)
RESUME = typer.Option(False, "--resume", help="Continue the run in --out from its checkpoint, exactly.")


@train_app.callback()
def pretrain(
    ctx: typer.Context,
    data: Path = typer.Option(
        Path("data"), "--data", "-d", help="An ingest output (manifest.json, shards/, tokenizer/)."
    ),
    out: Path = typer.Option(
        Path("runs/train"), "--out", "-o", help="Run directory: checkpoint/, run.json, metrics.jsonl, loss.png."
    ),
    preset: str = typer.Option(
        None,
        "--preset",
        help="nano, micro, tiny or small (default: the preset that trains best in 5 minutes on 2 cores).",
    ),
    layers: int = typer.Option(None, "--layers", min=1, help="Decoder layers (overrides the preset)."),
    hidden: int = typer.Option(None, "--hidden", min=1, help="Hidden size; the MLP becomes 3x unless --intermediate."),
    heads: int = typer.Option(None, "--heads", min=1, help="Query heads; key-value heads follow unless --kv-heads."),
    kv_heads: int = typer.Option(None, "--kv-heads", min=1, help="Key-value heads (grouped-query attention)."),
    intermediate: int = typer.Option(None, "--intermediate", min=1, help="SwiGLU hidden width."),
    vocab_size: int = typer.Option(None, "--vocab-size", min=1, help="Embedding rows (default: the tokenizer's)."),
    context: int = typer.Option(256, "--context", "-T", min=1, help="Tokens per training window."),
    batch_size: int = typer.Option(8, "--batch-size", "-B", min=1, help="Windows per process per micro-batch."),
    grad_accum: int = GRAD_ACCUM,
    max_steps: int = MAX_STEPS,
    time_budget: str = TIME_BUDGET,
    stop_at_step: int = STOP_AT,
    lr: float = typer.Option(1e-3, "--lr", help="Peak learning rate."),
    min_lr_ratio: float = MIN_LR,
    warmup: int = WARMUP,
    weight_decay: float = WEIGHT_DECAY,
    grad_clip: float = GRAD_CLIP,
    eval_interval: int = typer.Option(100, "--eval-interval", min=1, help="Evaluate every N steps (and at the end)."),
    eval_tokens: int = EVAL_TOKENS,
    save_interval: int = SAVE_INTERVAL,
    seed: int = SEED,
    device: str = DEVICE,
    dtype: str = DTYPE,
    resume: bool = RESUME,
    no_verify: bool = typer.Option(False, "--no-verify", help="Skip checking shard hashes against the manifest."),
) -> None:
    """Pretrain a model on token shards (with no subcommand); see the subcommands for fine-tuning."""
    if ctx.invoked_subcommand is not None:
        return
    from tokenworks.train.config import PretrainConfig, ShapeOverrides
    from tokenworks.train.pretrain import run_pretrain

    loop = _loop_options(
        out, context, batch_size, grad_accum, max_steps, time_budget, stop_at_step, lr, min_lr_ratio, warmup,
        weight_decay, grad_clip, eval_interval, eval_tokens, save_interval, seed, device, dtype, resume,
    )  # fmt: skip
    shape = ShapeOverrides(layers, hidden, heads, kv_heads, intermediate, vocab_size)
    config = PretrainConfig(data=data, preset=preset, shape=shape, verify_data=not no_verify, loop=loop)
    with TrainProgressView(loop) as view:
        record = run_pretrain(config, view.on_event)
    _summary(record)


@train_app.command("sft")
def sft(
    base: Path = typer.Option(..., "--base", help="The Hugging Face checkpoint (with tokenizer) to fine-tune."),
    data: Path = typer.Option(..., "--data", "-d", help='Chat JSONL: one {"messages": [...]} per line.'),
    out: Path = OUT,
    validation: Path = typer.Option(None, "--validation", help="Chat JSONL for evaluation loss."),
    epochs: float = typer.Option(
        None, "--epochs", min=0.0, help="Passes over the data (default 1, unless --max-steps or --time-budget)."
    ),
    context: int = typer.Option(512, "--context", "-T", min=1, help="Tokens per packed row."),
    batch_size: int = typer.Option(8, "--batch-size", "-B", min=1, help="Rows per process per micro-batch."),
    grad_accum: int = GRAD_ACCUM,
    max_steps: int = MAX_STEPS,
    time_budget: str = TIME_BUDGET,
    stop_at_step: int = STOP_AT,
    lr: float = typer.Option(None, "--lr", help="Peak learning rate (default 2e-5 full, 2e-4 LoRA)."),
    min_lr_ratio: float = MIN_LR,
    warmup: int = typer.Option(10, "--warmup", min=0, help="Linear warmup steps."),
    weight_decay: float = typer.Option(0.0, "--weight-decay", min=0.0, help="AdamW weight decay (matrices only)."),
    grad_clip: float = GRAD_CLIP,
    eval_interval: int = typer.Option(50, "--eval-interval", min=1, help="Evaluate every N steps (and at the end)."),
    eval_tokens: int = EVAL_TOKENS,
    save_interval: int = SAVE_INTERVAL,
    seed: int = SEED,
    device: str = DEVICE,
    dtype: str = DTYPE,
    resume: bool = RESUME,
    lora_rank: int = typer.Option(
        None, "--lora-rank", "-r", min=1, help="Train LoRA adapters of this rank instead of all weights."
    ),
    lora_alpha: float = typer.Option(None, "--lora-alpha", help="LoRA scale numerator (default 2 x rank)."),
    lora_dropout: float = typer.Option(0.0, "--lora-dropout", help="Dropout on the adapter input."),
    lora_targets: str = typer.Option("q_proj,v_proj", "--lora-targets", help="Comma-separated projections, or 'all'."),
    merge: bool = typer.Option(
        False, "--merge", help="LoRA: also write OUT/merged, a plain checkpoint with the adapter folded in."
    ),
    init_adapter: Path = typer.Option(
        None, "--init-adapter", help="LoRA: start from this saved adapter (its rank and targets) instead of zero."
    ),
    replay_data: Path = typer.Option(
        None, "--replay-data", help="An ingest output whose train split --replay-fraction replays (the base's own)."
    ),
    replay_fraction: float = typer.Option(
        0.0,
        "--replay-fraction",
        min=0.0,
        max=0.99,
        help="This share of every batch is pretraining text, so the general loss holds (0: none).",
    ),
) -> None:
    """Fine-tune a checkpoint on chat JSONL; loss on assistant tokens only, conversations packed."""
    from tokenworks.train.config import LoraConfig, SFTConfig, parse_targets
    from tokenworks.train.sft import run_sft

    lora = None
    if lora_rank is not None:
        alpha = lora_alpha if lora_alpha is not None else 2.0 * lora_rank
        lora = LoraConfig(lora_rank, alpha, lora_dropout, parse_targets(lora_targets))
    peak_lr = lr if lr is not None else (2e-4 if lora else 2e-5)
    loop = _loop_options(
        out, context, batch_size, grad_accum, max_steps, time_budget, stop_at_step, peak_lr, min_lr_ratio, warmup,
        weight_decay, grad_clip, eval_interval, eval_tokens, save_interval, seed, device, dtype, resume,
    )  # fmt: skip
    config = SFTConfig(
        base=base, data=data, validation=validation, epochs=epochs, lora=lora, merge=merge, init_adapter=init_adapter,
        replay_data=replay_data, replay_fraction=replay_fraction, loop=loop,
    )  # fmt: skip
    with TrainProgressView(loop) as view:
        record = run_sft(config, view.on_event)
    _summary(record)


@train_app.command("merge-lora")
def merge_lora(
    adapter: Path = typer.Argument(
        ..., help="A LoRA adapter directory (adapter_config.json, adapter_model.safetensors)."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Where to write the merged Hugging Face checkpoint."),
    base: Path = typer.Option(None, "--base", help="The base model (default: the one the adapter records)."),
) -> None:
    """Fold a LoRA adapter into its base model and write a plain checkpoint."""
    from tokenworks.train.sft import merge_adapter

    path = merge_adapter(adapter, out, base)
    Console().print(f"merged checkpoint in [bold]{path}[/]")


class TrainProgressView:
    """A progress bar with loss and tokens/s on the main process; silent on the others."""

    def __init__(self, loop: Any) -> None:
        self.main = int(os.environ.get("RANK", "0")) == 0
        self.console = Console(stderr=True)
        self.bar = Progress(
            TextColumn("[bold]train[/]"), BarColumn(), TextColumn("step {task.completed}/{task.fields[horizon]}"),
            TextColumn("loss {task.fields[loss]}"), TextColumn("val {task.fields[val]}"),
            TextColumn("{task.fields[tps]} tok/s"), TimeElapsedColumn(), console=self.console, disable=not self.main,
        )  # fmt: skip
        self.task = self.bar.add_task(
            "train", total=loop.max_steps, horizon=loop.max_steps or "?", loss="-", val="-", tps="-"
        )

    def __enter__(self) -> TrainProgressView:
        self.bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.__exit__(*exc)

    def on_event(self, record: dict[str, Any]) -> None:
        if record["kind"] == "eval":
            self.bar.update(self.task, val=f"{record['val_loss']:.3f}")
            return
        horizon = record.get("horizon")
        self.bar.update(
            self.task, completed=record["step"], total=horizon, horizon=horizon or "?",
            loss=f"{record['loss']:.3f}", tps=f"{record['tokens_per_s']:,.0f}",
        )  # fmt: skip


def _summary(run: Any) -> None:
    record = run.record
    if not record:  # not the main process
        return
    final, flops = record["final"], record["flops"]
    table = Table(title=f"tokenworks train {record['kind']}", show_header=False)
    table.add_row("parameters", f"{record['parameters']:,} ({record['trainable_parameters']:,} trained)")
    table.add_row("steps", f"{record['steps']:,} (stopped by {record['stopped_by']})")
    table.add_row("tokens", f"{record['tokens_seen']:,} at {record['tokens_per_s']:,.0f} tokens/s")
    if final["train_loss"] is not None:
        table.add_row("train loss", f"{final['train_loss']:.4f}")
    if final["val_loss"] is not None:
        table.add_row("validation loss", f"{final['val_loss']:.4f} (perplexity {final['val_perplexity']:.2f})")
    if flops["fraction_of_peak"] is not None:
        table.add_row(
            "model FLOP/s",
            f"{flops['achieved_per_s'] / 1e9:.1f} G ({flops['fraction_of_peak']:.1%} of the measured "
            f"{flops['matmul_peak_per_s'] / 1e9:.1f} G matmul peak)",
        )
    table.add_row("run directory", str(run.out))
    Console().print(table)
