"""What pretraining and SFT share around the loop: device setup, evaluation batches, the
checkpoint callback, and the run record (run.json, loss.png) at the end.
"""

from __future__ import annotations

import logging
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tokenworks.errors import TrainError
from tokenworks.model.config import ModelConfig
from tokenworks.train.checkpoint import CHECKPOINT_DIR
from tokenworks.train.config import LoopConfig, to_jsonable
from tokenworks.train.distributed import DistInfo
from tokenworks.train.loop import Batch, LoopResult, compute_dtype
from tokenworks.train.records import (
    PLOT_NAME,
    MetricsLog,
    flops_per_token,
    git_commit,
    matmul_parameters,
    measure_matmul_peak,
    plot_losses,
    write_run_json,
)

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class RunRecord:
    """run.json as a dataclass-free dict plus the paths a caller shows."""

    record: dict[str, Any]
    out: Path

    @property
    def checkpoint(self) -> Path:
        return self.out / CHECKPOINT_DIR


def batch_windows(windows: list[Batch], batch_size: int) -> list[Batch]:
    """Stack consecutive equal-length (1, T) windows into (B, T) batches of at most batch_size."""
    batches: list[Batch] = []
    group: list[Batch] = []
    for window in [*windows, None]:
        if group and (window is None or window[0].shape != group[0][0].shape or len(group) == batch_size):
            batches.append((torch.cat([x for x, _ in group]), torch.cat([y for _, y in group])))
            group = []
        if window is not None:
            group.append(window)
    return batches


def check_out_dir(out: Path, resume: bool) -> None:
    """A fresh run must not silently overwrite another run's checkpoint."""
    if not resume and (out / CHECKPOINT_DIR).exists():
        raise TrainError(
            f"{out / CHECKPOINT_DIR} already exists: pass --resume to continue that run, or choose another --out"
        )


def check_context(config: ModelConfig, context: int) -> None:
    if context > config.max_position_embeddings:
        raise TrainError(
            f"--context {context} exceeds the model's max_position_embeddings ({config.max_position_embeddings})"
        )


def write_records(
    kind: str,
    loop: LoopConfig,
    settings: Any,
    model: nn.Module,
    model_config: ModelConfig,
    result: LoopResult,
    info: DistInfo,
    device: torch.device,
    peak_flops: float | None,
    data: dict[str, Any],
    metrics: MetricsLog,
) -> RunRecord:
    """run.json and loss.png for a finished run (main process only)."""
    progress = result.progress
    tokens_per_s = progress.tokens_seen / progress.train_seconds if progress.train_seconds else 0.0
    per_token = flops_per_token(model, model_config, loop.context)
    achieved = per_token * tokens_per_s
    total_peak = peak_flops * info.world_size if peak_flops else None
    record = {
        "kind": kind,
        "config": to_jsonable(settings),
        "model": model_config.to_hf_dict(),
        "parameters": model_config.num_parameters(),
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "data": data,
        "git_commit": git_commit(),
        "environment": {
            "device": str(device), "world_size": info.world_size, "threads_per_process": torch.get_num_threads(),
            "compute_dtype": compute_dtype(device, loop.dtype), "torch": torch.__version__,
            "python": platform.python_version(), "machine": platform.machine(),
        },
        "steps": progress.step,
        "horizon": progress.horizon,
        "stopped_by": result.stopped_by,
        "tokens_seen": progress.tokens_seen,
        "tokens_per_step": loop.batch_size * loop.context * loop.grad_accum * info.world_size,
        "train_seconds": round(progress.train_seconds, 3),
        "elapsed_seconds": round(progress.elapsed_s, 3),
        "tokens_per_s": tokens_per_s,
        "flops": {
            "formula": "6 * matmul_parameters + 6 * layers * context * heads * head_dim (causal attention), per token",
            "matmul_parameters": matmul_parameters(model),
            "per_token": per_token,
            "achieved_per_s": achieved,
            "matmul_peak_per_s": total_peak,
            "peak_measurement": "best float32 2048^3 torch.mm over ~1 s, per process, times world_size",
            "fraction_of_peak": achieved / total_peak if total_peak else None,
        },
        "final": {
            "train_loss": result.train_loss,
            "val_loss": result.val_loss,
            "val_perplexity": None if result.val_loss is None else float(torch.tensor(result.val_loss).exp()),
        },
    }  # fmt: skip
    write_run_json(loop.out, record)
    plot_losses(
        metrics.read(), loop.out / PLOT_NAME, f"tokenworks train {kind}: {model_config.num_parameters():,} parameters"
    )
    return RunRecord(record, loop.out)


def matmul_peak(loop: LoopConfig, info: DistInfo, device: torch.device) -> float | None:
    """The device's float32 matmul peak, measured once by the main process."""
    if not info.is_main or loop.peak_seconds <= 0:
        return None
    return measure_matmul_peak(device, loop.peak_seconds)
