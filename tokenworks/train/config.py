"""What a training run is asked to do: dataclasses for pretraining, SFT and LoRA, and model shapes.

Pure Python (no torch), so the CLI can parse and check a configuration before it imports
anything heavy. Every check raises `TrainError` with a message that says what to change.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tokenworks.errors import TrainError
from tokenworks.model.adapter import LORA_TARGETS

# The preset `tokenworks train` uses with no model arguments: the one that reached the lowest
# validation loss on the default corpus within the default 5-minute budget on 2 CPU cores
# (benchmarks/preset_search.py runs that race; its tables are in docs/benchmarks.md).
DEFAULT_PRESET = "nano"
DEFAULT_TIME_BUDGET_S = 300.0


@dataclass(slots=True)
class ShapeOverrides:
    """Explicit model dimensions; each one given replaces the preset's value."""

    layers: int | None = None
    hidden: int | None = None
    heads: int | None = None
    kv_heads: int | None = None
    intermediate: int | None = None
    vocab_size: int | None = None  # None: the tokenizer's vocabulary

    def given(self) -> bool:
        return any(value is not None for value in asdict(self).values())

    def model_fields(self) -> dict[str, int]:
        """ModelConfig keyword overrides. A new width implies a 3x SwiGLU width and a new head
        count implies plain multi-head attention, unless those are given too."""
        fields: dict[str, int] = {}
        if self.layers is not None:
            fields["num_hidden_layers"] = self.layers
        if self.hidden is not None:
            fields["hidden_size"] = self.hidden
            fields["intermediate_size"] = 3 * self.hidden
        if self.heads is not None:
            fields["num_attention_heads"] = self.heads
            fields["num_key_value_heads"] = self.heads
        if self.kv_heads is not None:
            fields["num_key_value_heads"] = self.kv_heads
        if self.intermediate is not None:
            fields["intermediate_size"] = self.intermediate
        for name, value in fields.items():
            if value <= 0:
                raise TrainError(f"model dimension {name} must be positive, got {value}")
        return fields


@dataclass(slots=True)
class OptimConfig:
    """AdamW with decoupled weight decay on matrices only, linear warmup then cosine decay."""

    lr: float = 1e-3
    min_lr_ratio: float = 0.1  # the cosine ends at lr * min_lr_ratio
    warmup_steps: int = 20
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # 0 turns clipping off

    def check(self) -> None:
        if self.lr <= 0:
            raise TrainError(f"--lr must be positive, got {self.lr}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise TrainError(f"--min-lr-ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.warmup_steps < 0 or self.weight_decay < 0 or self.grad_clip < 0:
            raise TrainError("--warmup, --weight-decay and --grad-clip must not be negative")


@dataclass(slots=True)
class LoopConfig:
    """The parts of a run that pretraining and SFT share: batch, length, schedule, records."""

    out: Path = Path("runs/train")
    context: int = 256
    batch_size: int = 8  # sequences per process per micro-step
    grad_accum: int = 1  # micro-steps per optimizer step
    max_steps: int | None = None  # None: as many as the time budget allows
    time_budget_s: float | None = None  # None with max_steps None: DEFAULT_TIME_BUDGET_S
    stop_at_step: int | None = None  # end this invocation early (checkpointed); the schedule still spans max_steps
    eval_interval: int = 100
    eval_tokens: int = 65_536  # validation tokens per evaluation, at most
    save_interval: int = 0  # 0: checkpoint only at the end
    log_interval: int = 1
    seed: int = 0
    device: str = "auto"  # auto: cuda when present, else cpu
    dtype: str = "auto"  # auto: bf16 autocast where the device supports it, else float32
    resume: bool = False
    peak_seconds: float = 1.0  # how long to measure the device's matmul peak
    optim: OptimConfig = field(default_factory=OptimConfig)

    def check(self) -> None:
        self.optim.check()
        for name in ("context", "batch_size", "grad_accum", "eval_interval", "log_interval"):
            if getattr(self, name) < 1:
                raise TrainError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.max_steps is not None and self.max_steps < 1:
            raise TrainError(f"--max-steps must be at least 1, got {self.max_steps}")
        if self.time_budget_s is not None and self.time_budget_s <= 0:
            raise TrainError(f"--time-budget must be positive, got {self.time_budget_s} s")
        if self.dtype not in ("auto", "float32", "bfloat16"):
            raise TrainError(f"--dtype must be auto, float32 or bfloat16, got {self.dtype!r}")

    @property
    def budget_s(self) -> float | None:
        """The wall-clock budget in force: the default one applies only when no step limit is given."""
        if self.time_budget_s is None and self.max_steps is None:
            return DEFAULT_TIME_BUDGET_S
        return self.time_budget_s


@dataclass(slots=True)
class PretrainConfig:
    """`tokenworks train`: a model from token shards."""

    data: Path = Path("data")
    preset: str | None = None  # None: DEFAULT_PRESET
    shape: ShapeOverrides = field(default_factory=ShapeOverrides)
    init_std: float = 0.02
    verify_data: bool = True  # check every shard's sha256 against the manifest before training
    loop: LoopConfig = field(default_factory=LoopConfig)


@dataclass(slots=True)
class LoraConfig:
    """Low-rank adapters on the named projections: W x + (alpha / rank) B A dropout(x)."""

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple[str, ...] = ("q_proj", "v_proj")

    def check(self) -> None:
        if self.rank < 1:
            raise TrainError(f"--lora-rank must be at least 1, got {self.rank}")
        if not 0 <= self.dropout < 1:
            raise TrainError(f"--lora-dropout must be in [0, 1), got {self.dropout}")
        unknown = [t for t in self.targets if t not in LORA_TARGETS]
        if unknown or not self.targets:
            raise TrainError(
                f"unknown LoRA target {', '.join(unknown) or '(none given)'}; choose from {', '.join(LORA_TARGETS)}"
            )

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank


@dataclass(slots=True)
class SFTConfig:
    """`tokenworks train sft`: fine-tune a checkpoint on chat JSONL, loss on assistant tokens only."""

    base: Path = Path("model")
    data: Path = Path("chat.jsonl")
    validation: Path | None = None
    epochs: float | None = None  # None with max_steps None: 1 epoch
    lora: LoraConfig | None = None
    merge: bool = False  # with LoRA: export the merged plain checkpoint instead of the adapter
    init_adapter: Path | None = None  # with LoRA: start from this saved adapter (its rank and targets), not from zero
    # Rehearsal (train/replay.py): this share of every batch is windows of this ingest output's train split.
    replay_data: Path | None = None
    replay_fraction: float = 0.0
    loop: LoopConfig = field(default_factory=lambda: LoopConfig(context=512, batch_size=8, eval_interval=50))


def parse_duration(text: str) -> float:
    """Seconds from '90', '90s', '5m', '1h30m' or '1.5h'."""
    text = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    parts = re.findall(r"(\d+(?:\.\d+)?)([hms])", text)
    if not parts or "".join(number + unit for number, unit in parts) != text:
        raise TrainError(f"cannot read the duration {text!r}: write it like 300, 90s, 5m or 1h30m")
    return sum(float(number) * {"h": 3600, "m": 60, "s": 1}[unit] for number, unit in parts)


def parse_targets(text: str) -> tuple[str, ...]:
    """'q_proj,v_proj' or 'all' -> the projection names."""
    if text.strip() == "all":
        return LORA_TARGETS
    return tuple(part.strip() for part in text.split(",") if part.strip())


def to_jsonable(value: Any) -> Any:
    """A config dataclass (or anything inside one) as JSON-ready values."""
    if hasattr(value, "__dataclass_fields__"):
        return {name: to_jsonable(getattr(value, name)) for name in value.__dataclass_fields__}
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value
