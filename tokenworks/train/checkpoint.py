"""Training checkpoints: the model in Hugging Face layout plus everything an exact resume needs.

OUT/checkpoint/ holds config.json, model.safetensors, generation_config.json and the
tokenizer (a LoRA run: adapter_config.json + adapter_model.safetensors instead of the
model), and trainer_state.pt: step, optimizer moments, sampler and torch RNG state,
schedule horizon and counters. It is written to a temporary directory and renamed into
place, so an interrupted save never leaves a half-written checkpoint.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tokenworks.errors import TrainError
from tokenworks.model.checkpoint import save_model
from tokenworks.model.config import ModelConfig
from tokenworks.model.tokenizer import Tokenizer
from tokenworks.model.transformer import CausalLM
from tokenworks.train.config import LoraConfig
from tokenworks.train.lora import save_adapter

CHECKPOINT_DIR = "checkpoint"
STATE_NAME = "trainer_state.pt"
STATE_VERSION = 1
# The fields that decide every tensor's shape: a resume must agree on all of them.
SHAPE_FIELDS = (
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "head_dim", "tie_word_embeddings", "qkv_bias", "o_bias", "mlp_bias",
)  # fmt: skip


@dataclass(slots=True)
class Progress:
    """Counters that continue across a resume."""

    step: int = 0  # optimizer steps completed
    tokens_seen: int = 0
    train_seconds: float = 0.0  # time inside training steps (for tokens/s)
    elapsed_s: float = 0.0  # wall-clock of the run so far, evaluations and saves included
    horizon: int | None = None  # the step the cosine schedule ends at
    extra: dict[str, Any] = field(default_factory=dict)


def save_checkpoint(
    out: Path,
    model: CausalLM,
    tokenizer: Tokenizer | None,
    optimizer: torch.optim.Optimizer,
    sampler_state: dict[str, Any],
    progress: Progress,
    lora: LoraConfig | None = None,
    base: str = "",
) -> Path:
    """Write OUT/checkpoint atomically and return its path."""
    final = out / CHECKPOINT_DIR
    staging = out / f"{CHECKPOINT_DIR}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    if lora is None:
        save_model(model, staging)
    else:
        save_adapter(model, lora, staging, base)
    if tokenizer is not None:
        tokenizer.save(staging)
    state = {
        "version": STATE_VERSION,
        "progress": {k: getattr(progress, k) for k in Progress.__dataclass_fields__},
        "optimizer": optimizer.state_dict(),
        "sampler": sampler_state,
        "torch_rng": torch.get_rng_state(),
        "model_config": model.config.to_hf_dict(),
        "lora": None if lora is None else {"rank": lora.rank, "alpha": lora.alpha, "targets": list(lora.targets)},
    }
    torch.save(state, staging / STATE_NAME)
    old = out / f"{CHECKPOINT_DIR}.old"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    staging.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def read_state(out: Path) -> dict[str, Any]:
    """trainer_state.pt of OUT/checkpoint, or a TrainError saying why a resume is impossible."""
    path = out / CHECKPOINT_DIR / STATE_NAME
    if not path.is_file():
        raise TrainError(f"cannot resume: {path} not found (was {out} written by `tokenworks train`?)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises assorted errors for truncated or foreign files
        raise TrainError(f"cannot resume: {path} is unreadable ({error})") from None
    if state.get("version") != STATE_VERSION:
        raise TrainError(f"cannot resume: {path} has state version {state.get('version')}, expected {STATE_VERSION}")
    return state


def check_resume_shape(state: dict[str, Any], config: ModelConfig, lora: LoraConfig | None, out: Path) -> None:
    """Refuse a resume whose checkpoint has another shape than the model this run builds."""
    saved = ModelConfig.from_hf_dict(state["model_config"])
    for name in SHAPE_FIELDS:
        if getattr(saved, name) != getattr(config, name):
            raise TrainError(
                f"cannot resume from {out / CHECKPOINT_DIR}: it has {name}={getattr(saved, name)} but this run "
                f"asks for {name}={getattr(config, name)}; use the same model arguments, or a new --out"
            )
    wanted = None if lora is None else {"rank": lora.rank, "alpha": lora.alpha, "targets": list(lora.targets)}
    if state.get("lora") != wanted:
        raise TrainError(
            f"cannot resume from {out / CHECKPOINT_DIR}: its LoRA settings {state.get('lora')} differ from this "
            f"run's {wanted}"
        )


def restore(state: dict[str, Any], optimizer: torch.optim.Optimizer) -> Progress:
    """Load the optimizer and torch RNG from a trainer state; return its counters."""
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["torch_rng"])
    return Progress(**state["progress"])
