"""What a run leaves behind: metrics.jsonl (a line per log step and evaluation), run.json, loss.png,
and the numbers behind them: model FLOPs per token and the device's measured matmul peak.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tokenworks.model.config import ModelConfig

METRICS_NAME = "metrics.jsonl"
RUN_NAME = "run.json"
PLOT_NAME = "loss.png"


def matmul_parameters(model: nn.Module) -> int:
    """Weights that take part in a matmul per token: every Linear, lm_head included even when it
    is tied to the embedding (the lookup itself costs no FLOPs)."""
    seen: set[int] = set()
    total = 0
    for module in model.modules():
        if isinstance(module, nn.Linear) and id(module) not in seen:
            seen.add(id(module))
            total += module.weight.numel()
    return total


def flops_per_token(model: nn.Module, config: ModelConfig, context: int) -> float:
    """Training FLOPs per token: 6 N (forward + backward of every matmul weight) plus causal attention,
    6 L T d_q / 2 * 2 = 6 L T d_q (QK^T and AV, 2 FLOPs per multiply-add, x3 for backward, halved by the mask)."""
    attention = 6 * config.num_hidden_layers * context * config.num_attention_heads * config.head_dim
    return 6.0 * matmul_parameters(model) + attention


def measure_matmul_peak(device: torch.device, seconds: float = 1.0, size: int = 2048) -> float:
    """Float32 matmul FLOP/s of this device with the current thread count: the best of repeated
    size^3 products over about `seconds` (one warm-up product first)."""
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    torch.mm(a, b)
    _sync(device)
    best, start = 0.0, time.perf_counter()
    while True:
        t0 = time.perf_counter()
        torch.mm(a, b)
        _sync(device)
        elapsed = time.perf_counter() - t0
        best = max(best, 2 * size**3 / elapsed)
        if time.perf_counter() - start >= seconds:
            return best


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def git_commit() -> str | None:
    """The commit of the tokenworks source tree, with '-dirty' when it has local changes."""
    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("-dirty" if dirty else "")


class MetricsLog:
    """metrics.jsonl, appended line by line (a resumed run continues the same file)."""

    def __init__(self, out: Path, truncate: bool) -> None:
        self.path = out / METRICS_NAME
        out.mkdir(parents=True, exist_ok=True)
        if truncate:
            self.path.write_text("")

    def write(self, record: dict[str, Any]) -> None:
        with self.path.open("a") as file:
            file.write(json.dumps(record) + "\n")

    def read(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def drop_after(self, step: int) -> None:
        """Forget lines logged after `step`: a resumed run replays those steps from its checkpoint."""
        kept = [r for r in self.read() if r["step"] <= step]
        self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))


def write_run_json(out: Path, record: dict[str, Any]) -> Path:
    path = out / RUN_NAME
    path.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return path


def plot_losses(records: list[dict[str, Any]], path: Path, title: str) -> Path | None:
    """Train and validation loss against tokens seen; None when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only, no display
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    train = [r for r in records if r.get("kind") == "train"]
    evals = [r for r in records if r.get("kind") == "eval"]
    figure, axis = plt.subplots(figsize=(7, 4), dpi=100)
    if train:
        axis.plot([r["tokens"] for r in train], [r["loss"] for r in train], label="train", linewidth=1)
    if evals:
        axis.plot([r["tokens"] for r in evals], [r["val_loss"] for r in evals], "o-", label="validation")
    axis.set_xlabel("tokens seen")
    axis.set_ylabel("cross-entropy (nats/token)")
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path
