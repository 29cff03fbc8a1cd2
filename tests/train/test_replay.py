"""Replay in SFT: the exact composition of a mixed batch, its resumable state, and the run that uses it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tokenworks.model import Tokenizer
from tokenworks.train.config import TrainError
from tokenworks.train.data import IGNORE_INDEX, WindowSampler, open_shards
from tokenworks.train.replay import ReplaySampler, replay_rows
from tokenworks.train.sft_data import RowSampler, pack, tokenize_conversation

CONTEXT = 32


def _conversations(count: int = 12) -> list[list[dict[str, str]]]:
    return [
        [{"role": "user", "content": f"What is item {i}?"}, {"role": "assistant", "content": f"Item {i} is a tool."}]
        for i in range(count)
    ]


def _samplers(checkpoint: Path, shards: Path) -> tuple[RowSampler, WindowSampler]:
    tokenizer = Tokenizer.load(checkpoint)
    rows = pack([tokenize_conversation(tokenizer, c) for c in _conversations()], CONTEXT, tokenizer.pad_token_id)
    return RowSampler(rows, seed=0), WindowSampler(open_shards(shards).train, CONTEXT, seed=0)


def test_replay_rows_keep_at_least_one_sft_row() -> None:
    assert [replay_rows(8, f) for f in (0.0, 0.25, 0.5, 0.9)] == [0, 2, 4, 7]
    assert (replay_rows(2, 0.5), replay_rows(1, 0.5)) == (1, 0)
    with pytest.raises(TrainError, match=r"replay fraction must be in \[0, 1\), got 1.0"):
        replay_rows(8, 1.0)


def test_a_batch_is_sft_rows_then_replay_windows(trained_checkpoint: Path, shards_dir: Path) -> None:
    sft, windows = _samplers(trained_checkpoint, shards_dir)
    x, y = ReplaySampler(sft, windows, 0.25).next_batch(8)
    assert x.shape == y.shape == (8, CONTEXT)
    # The same seeds alone: the first 6 rows are the SFT sampler's batch, the last 2 the window sampler's.
    sft_alone, windows_alone = _samplers(trained_checkpoint, shards_dir)
    sft_x, sft_y = sft_alone.next_batch(6)
    replay_x, replay_y = windows_alone.next_batch(2)
    assert torch.equal(x[:6], sft_x) and torch.equal(y[:6], sft_y)
    assert torch.equal(x[6:], replay_x) and torch.equal(y[6:], replay_y)
    # Every replayed token is a target, as in pretraining; SFT rows carry loss on replies only.
    assert int((y[6:] == IGNORE_INDEX).sum()) == 0
    assert int((y[:6] != IGNORE_INDEX).sum()) == int((sft_y != IGNORE_INDEX).sum()) < 6 * CONTEXT


def test_a_replay_sampler_resumes_exactly(trained_checkpoint: Path, shards_dir: Path) -> None:
    first = ReplaySampler(*_samplers(trained_checkpoint, shards_dir), fraction=0.5)
    first.next_batch(4)
    state = json.loads(json.dumps(first.state_dict(), default=int))  # as a checkpoint keeps it
    resumed = ReplaySampler(*_samplers(trained_checkpoint, shards_dir), fraction=0.5)
    resumed.load_state_dict(state)
    for mine, theirs in zip(first.next_batch(4), resumed.next_batch(4), strict=True):
        assert torch.equal(mine, theirs)


def test_sft_with_replay_from_the_command_line(trained_checkpoint: Path, shards_dir: Path, tmp_path: Path) -> None:
    """`train sft --replay-fraction` needs `--replay-data` (a one-line error, nothing trained),
    and with it trains on mixed batches and records both in run.json."""
    chat = tmp_path / "chat.jsonl"
    chat.write_text("".join(json.dumps({"messages": c}) + "\n" for c in _conversations()))
    command = [
        sys.executable, "-m", "tokenworks", "train", "sft", "--base", str(trained_checkpoint), "--data", str(chat),
        "--out", str(tmp_path / "out"), "--lora-rank", "2", "--context", str(CONTEXT), "--batch-size", "4",
        "--max-steps", "2", "--eval-interval", "2", "--warmup", "1", "--lr", "1e-2", "--replay-fraction", "0.5",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    refused = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert "a replay fraction needs the pretraining data" in refused.stderr
    assert not (tmp_path / "out" / "checkpoint").exists()
    trained = subprocess.run(
        [*command, "--replay-data", str(shards_dir)], capture_output=True, text=True, timeout=300, env=env
    )
    assert trained.returncode == 0, trained.stderr
    record = json.loads((tmp_path / "out" / "run.json").read_text())
    assert (record["steps"], record["config"]["replay_fraction"], record["config"]["replay_data"]) == (
        2,
        0.5,
        str(shards_dir),
    )
    assert (tmp_path / "out" / "checkpoint" / "adapter_model.safetensors").is_file()
