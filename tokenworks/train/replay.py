"""Replay (rehearsal) for SFT: pretraining windows mixed into every fine-tuning batch.

A fine-tune on a narrow set of chat examples drifts away from the text the model was
pretrained on; the loss on that text goes up. Training a share of every batch on windows of
the pretraining corpus's train split keeps the model close to what it knew, while the rest
of the batch teaches the new task. Each batch holds `round(batch_size * fraction)` replay
windows (whole windows: every token is a target, as in pretraining) and the rest SFT rows;
the count is fixed, so every batch has the same composition.
"""

from __future__ import annotations

from typing import Any

import torch

from tokenworks.errors import TrainError
from tokenworks.train.data import WindowSampler
from tokenworks.train.sft_data import RowSampler


def replay_rows(batch_size: int, fraction: float) -> int:
    """How many of a batch's rows are replay windows: at least one SFT row stays."""
    if not 0 <= fraction < 1:
        raise TrainError(f"the replay fraction must be in [0, 1), got {fraction}")
    return min(round(batch_size * fraction), batch_size - 1)


class ReplaySampler:
    """SFT rows first, then replay windows, in each batch; `state_dict()` resumes both exactly."""

    def __init__(self, sft: RowSampler, replay: WindowSampler, fraction: float) -> None:
        self.sft, self.replay, self.fraction = sft, replay, fraction

    def next_batch(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        windows = replay_rows(batch_size, self.fraction)
        sft_x, sft_y = self.sft.next_batch(batch_size - windows)  # (B - R, T)
        if windows == 0:
            return sft_x, sft_y
        replay_x, replay_y = self.replay.next_batch(windows)  # (R, T)
        return torch.cat([sft_x, replay_x]), torch.cat([sft_y, replay_y])

    def state_dict(self) -> dict[str, Any]:
        return {**self.sft.state_dict(), "replay": self.replay.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sft.load_state_dict(state)
        self.replay.load_state_dict(state["replay"])
