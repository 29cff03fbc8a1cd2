"""The training loop shared by pretraining and SFT: micro-batches, accumulation, clipping,
schedule, evaluation, checkpoints, the time budget and the records.

One optimizer step (nanoGPT style):
    for each of grad_accum micro-steps:  x, y: (B, T) -> logits (B, T, V) -> loss / grad_accum -> backward
    clip the global gradient norm, set the scheduled lr, AdamW step
Under DDP, gradients are all-reduced on the last micro-step only (no_sync before it).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from tokenworks.train.checkpoint import Progress
from tokenworks.train.config import LoopConfig
from tokenworks.train.data import IGNORE_INDEX
from tokenworks.train.distributed import DistInfo, all_reduce_sum, broadcast_flag, broadcast_float
from tokenworks.train.optim import learning_rate, set_learning_rate
from tokenworks.train.records import MetricsLog

Batch = tuple[torch.Tensor, torch.Tensor]  # inputs (B, T), targets (B, T) with IGNORE_INDEX for no loss
Event = Callable[[dict[str, Any]], None]


class Sampler(Protocol):
    def next_batch(self, batch_size: int) -> Batch: ...
    def state_dict(self) -> dict[str, Any]: ...


@dataclass(slots=True)
class LoopResult:
    progress: Progress
    train_loss: float | None
    val_loss: float | None
    stopped_by: str  # max_steps, time_budget or stop_at_step
    history: list[dict[str, Any]] = field(default_factory=list)


def autocast_for(device: torch.device, dtype: str) -> contextlib.AbstractContextManager:
    """bf16 autocast where the device runs it natively (CUDA with bf16); float32 otherwise."""
    use_bf16 = dtype == "bfloat16" or (
        dtype == "auto" and device.type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    )
    if use_bf16:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def compute_dtype(device: torch.device, dtype: str) -> str:
    return "bfloat16" if isinstance(autocast_for(device, dtype), torch.autocast) else "float32"


def causal_lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over the targets that carry loss. logits (B, T, V), targets (B, T)."""
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX)


@torch.no_grad()
def evaluate(model: nn.Module, batches: list[Batch], device: torch.device, dtype: str, info: DistInfo) -> float:
    """Mean loss per target token over the batches (split across processes, summed back)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for x, y in batches[info.rank :: info.world_size]:
        with autocast_for(device, dtype):
            logits = model(x.to(device))
        targets = y.to(device)
        losses = F.cross_entropy(
            logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
        )
        total += float(losses)
        count += int((targets != IGNORE_INDEX).sum())
    model.train(was_training)
    total, count = all_reduce_sum([total, float(count)], device)
    return total / count if count else float("nan")


class TrainLoop:
    """Runs optimizer steps until max_steps, the time budget or stop_at_step, evaluating and saving."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        sampler: Sampler,
        eval_batches: list[Batch],
        config: LoopConfig,
        device: torch.device,
        info: DistInfo,
        save: Callable[[Progress], None],
        metrics: MetricsLog | None,
        on_event: Event | None = None,
    ) -> None:
        self.model = model
        device_ids = [device.index] if device.type == "cuda" else None
        self.ddp = DistributedDataParallel(model, device_ids=device_ids) if info.enabled else None
        self.optimizer = optimizer
        self.sampler = sampler
        self.eval_batches = eval_batches
        self.config = config
        self.device = device
        self.info = info
        self.save = save
        self.metrics = metrics
        self.on_event = on_event or (lambda record: None)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.tokens_per_step = config.batch_size * config.context * config.grad_accum * info.world_size
        self.eval_seconds = 0.0

    def _emit(self, record: dict[str, Any]) -> None:
        if self.info.is_main:
            if self.metrics is not None:
                self.metrics.write(record)
            self.on_event(record)

    def _evaluate(self, progress: Progress) -> float | None:
        if not self.eval_batches:
            return None
        start = time.perf_counter()
        loss = evaluate(self.model, self.eval_batches, self.device, self.config.dtype, self.info)
        self.eval_seconds = time.perf_counter() - start
        record = {"kind": "eval", "step": progress.step, "tokens": progress.tokens_seen, "val_loss": loss}
        self._emit({**record, "val_perplexity": math.exp(min(loss, 50.0)), "eval_seconds": self.eval_seconds})
        return loss

    def train_step(self, progress: Progress) -> tuple[float, float | None]:
        """One optimizer step; returns (mean loss over the global batch, pre-clip gradient norm)."""
        config = self.config
        lr = learning_rate(progress.step, config.optim, progress.horizon)
        set_learning_rate(self.optimizer, lr)
        forward = self.ddp or self.model
        loss_sum = torch.zeros((), device=self.device)
        for micro in range(config.grad_accum):
            x, y = self.sampler.next_batch(config.batch_size)
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            last = micro == config.grad_accum - 1
            sync = contextlib.nullcontext() if (self.ddp is None or last) else self.ddp.no_sync()
            with sync:
                with autocast_for(self.device, config.dtype):
                    logits = forward(x)  # (B, T, V)
                loss = causal_lm_loss(logits, y)
                (loss / config.grad_accum).backward()
            loss_sum += loss.detach()
        grad_norm = None
        if config.optim.grad_clip > 0:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, config.optim.grad_clip, foreach=True))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        (mean_loss,) = all_reduce_sum([float(loss_sum) / config.grad_accum], self.device)
        return mean_loss / self.info.world_size, grad_norm

    def _size_horizon(self, progress: Progress, budget: float, first_step: int) -> None:
        """Fit the cosine to the time budget: the steps that fit in what is left, evaluations included."""
        done = progress.step - first_step
        if done < 2:
            return
        step_seconds = progress.train_seconds / max(progress.step, 1)
        per_step = step_seconds + self.eval_seconds / self.config.eval_interval
        left = budget - progress.elapsed_s - self.eval_seconds  # keep room for the final evaluation
        horizon = progress.step + max(int(left / per_step), 0)
        progress.horizon = int(broadcast_float(float(horizon), self.device))

    def run(self, progress: Progress) -> LoopResult:
        config = self.config
        budget = config.budget_s
        if config.max_steps is not None:
            progress.horizon = config.max_steps
        first_step = progress.step
        self.model.train()
        val_loss = self._evaluate(progress) if progress.step == 0 else None
        train_loss: float | None = None
        stopped_by = "max_steps"
        run_start = time.perf_counter() - progress.elapsed_s
        while True:
            if config.max_steps is not None and progress.step >= config.max_steps:
                stopped_by = "max_steps"
                break
            if config.max_steps is None and progress.horizon is not None and progress.step >= progress.horizon:
                stopped_by = "time_budget"
                break
            if config.stop_at_step is not None and progress.step >= config.stop_at_step:
                stopped_by = "stop_at_step"
                break
            start = time.perf_counter()
            train_loss, grad_norm = self.train_step(progress)
            seconds = time.perf_counter() - start
            progress.step += 1
            progress.tokens_seen += self.tokens_per_step
            progress.train_seconds += seconds
            progress.elapsed_s = time.perf_counter() - run_start
            if progress.step % config.log_interval == 0:
                lr = self.optimizer.param_groups[0]["lr"]
                self._emit(
                    {
                        "kind": "train", "step": progress.step, "tokens": progress.tokens_seen, "loss": train_loss,
                        "lr": lr, "grad_norm": grad_norm, "tokens_per_s": self.tokens_per_step / seconds,
                        "elapsed_s": round(progress.elapsed_s, 3), "horizon": progress.horizon,
                    }
                )  # fmt: skip
            if not math.isfinite(train_loss):
                stopped_by = "diverged"
                break
            if budget is not None and config.max_steps is None:
                # Re-sized every step from the mean step time so far: on a machine whose speed varies,
                # the cosine stretches or shrinks to end at the budget instead of at a stale guess.
                self._size_horizon(progress, budget, first_step)
            if progress.step % config.eval_interval == 0:
                val_loss = self._evaluate(progress)
                progress.elapsed_s = time.perf_counter() - run_start
            if config.save_interval and progress.step % config.save_interval == 0:
                self.save(progress)
            if budget is not None:
                step_seconds = progress.train_seconds / max(progress.step - first_step, 1)
                over = progress.elapsed_s + step_seconds + self.eval_seconds > budget
                if broadcast_flag(over, self.device):
                    stopped_by = "time_budget"
                    break
        if progress.step % config.eval_interval != 0 or val_loss is None:
            val_loss = self._evaluate(progress)
        progress.elapsed_s = time.perf_counter() - run_start
        self.save(progress)
        return LoopResult(progress, train_loss, val_loss, stopped_by)
