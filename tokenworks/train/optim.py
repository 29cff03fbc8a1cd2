"""AdamW with weight-decay groups, and the learning-rate schedule (linear warmup, cosine decay).

Decay applies to matrices (projections, embeddings) and never to norms or biases, as in
GPT-2/nanoGPT: shrinking a gain or an offset toward zero is not regularisation.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from tokenworks.train.config import OptimConfig


def build_optimizer(model: nn.Module, config: OptimConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW over the trainable parameters: decay for >= 2-D tensors, none for the rest."""
    trainable = [p for p in model.parameters() if p.requires_grad]  # .parameters() yields a tied tensor once
    decay = [p for p in trainable if p.dim() >= 2]
    no_decay = [p for p in trainable if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    # The fused kernel (one pass over all parameters) exists for CPU and CUDA float tensors; it is
    # the fastest AdamW on both and deterministic, which the exact resume relies on.
    return torch.optim.AdamW(
        [g for g in groups if g["params"]], lr=config.lr, betas=(config.beta1, config.beta2), fused=True
    )


def learning_rate(step: int, config: OptimConfig, horizon: int | None) -> float:
    """The learning rate of optimizer step `step` (0-based).

    Warmup: lr * (step + 1) / warmup. Then a cosine from lr to lr * min_lr_ratio over the
    steps left until `horizon`; with no horizon known yet (a time budget still being sized)
    the peak rate holds.
    """
    peak = config.lr
    if step < config.warmup_steps:
        return peak * (step + 1) / config.warmup_steps
    if horizon is None:
        return peak
    span = max(horizon - config.warmup_steps, 1)
    progress = min((step - config.warmup_steps) / span, 1.0)
    low = peak * config.min_lr_ratio
    return low + 0.5 * (peak - low) * (1.0 + math.cos(math.pi * progress))


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
