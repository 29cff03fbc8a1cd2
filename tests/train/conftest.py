"""Shared fixtures: a private copy of the ingest output (tests/conftest.py's shards_dir), and a tiny trained checkpoint."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tokenworks.train.config import LoopConfig, OptimConfig, PretrainConfig


@pytest.fixture()
def shards_copy(shards_dir: Path, tmp_path: Path) -> Path:
    """A private copy, for tests that damage it."""
    return Path(shutil.copytree(shards_dir, tmp_path / "data"))


def nano_config(data: Path, out: Path, **loop: object) -> PretrainConfig:
    """A few-second pretraining run: the nano preset, short windows, no peak measurement."""
    optim = OptimConfig(lr=3e-3, warmup_steps=2)
    settings = dict(context=32, batch_size=4, max_steps=8, eval_interval=4, eval_tokens=2048, peak_seconds=0.0)
    settings.update(loop)
    return PretrainConfig(data=data, preset="nano", loop=LoopConfig(out=out, optim=optim, **settings))


@pytest.fixture(scope="session")
def trained_checkpoint(shards_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """OUT/checkpoint of a short nano run (weights moved off their initialisation)."""
    from tokenworks.train.pretrain import run_pretrain

    out = tmp_path_factory.mktemp("trained")
    run_pretrain(nano_config(shards_dir, out, max_steps=6))
    return out / "checkpoint"
