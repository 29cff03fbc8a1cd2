"""LoRA adapters for tests: PEFT directories with random weights, written by tokenworks' trainer code."""

from __future__ import annotations

from pathlib import Path

import torch

from tokenworks.model.checkpoint import load_model
from tokenworks.train.config import LoraConfig
from tokenworks.train.lora import apply_lora, save_adapter

ALL_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def make_adapter(base: Path, directory: Path, rank: int, targets: tuple[str, ...], seed: int) -> Path:
    """An adapter of `base` with random A and B (a fresh adapter's B is zero: it would change nothing)."""
    torch.manual_seed(seed)
    model = load_model(base, dtype="float32")
    config = LoraConfig(rank, 2.0 * rank, 0.0, targets)
    apply_lora(model, config)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0.0, 0.2)
    return save_adapter(model, config, directory, base=str(base))
