"""Pretraining data: checked token shards, random training windows with saveable state, fixed
validation windows.

A training batch is `batch_size * world_size` windows of `context + 1` tokens drawn at random
positions of the train split (a shard chosen in proportion to its size); each process keeps
its own slice, so N processes see exactly the batch one process would. The random state is a
numpy PCG64 whose state is a small dict, saved with every checkpoint for an exact resume.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tokenworks.data.shards import MANIFEST_NAME, TokenShards
from tokenworks.errors import TrainError

IGNORE_INDEX = -100  # label of a position that carries no loss (F.cross_entropy's default)


@dataclass(slots=True)
class ShardData:
    """The train and validation splits of an ingest output, checked and memory-mapped."""

    directory: Path
    manifest: dict[str, Any]
    manifest_sha256: str
    train: TokenShards
    validation: TokenShards | None
    vocab_size: int  # of the tokenizer that made the shards

    @property
    def tokenizer_dir(self) -> Path:
        return self.directory / self.manifest["tokenizer"].get("path", "tokenizer")


def open_shards(directory: Path, verify: bool = True) -> ShardData:
    """Read the manifest, check every shard and tokenizer file against its hash, map the splits.

    Raises TrainError naming the first missing, resized or altered file, so a corrupt corpus
    stops the run before any model is built.
    """
    manifest_path = directory / MANIFEST_NAME
    if not manifest_path.is_file():
        raise TrainError(f"{manifest_path} not found: run `tokenworks ingest --out {directory}` first, or pass --data")
    raw = manifest_path.read_bytes()
    try:
        manifest = json.loads(raw)
        splits = manifest["shards"]["splits"]
        vocab_size = int(manifest["tokenizer"]["vocab_size"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        raise TrainError(f"{manifest_path} is not a tokenworks ingest manifest") from None
    for entry in manifest.get("outputs", []):
        path = directory / entry["path"]
        if not path.is_file():
            raise TrainError(f"{path} is listed in {MANIFEST_NAME} but missing: re-run `tokenworks ingest`")
        if path.stat().st_size != entry["bytes"]:
            raise TrainError(
                f"{path} has {path.stat().st_size} bytes but {MANIFEST_NAME} says {entry['bytes']}: "
                "the file is truncated or altered; re-run `tokenworks ingest`"
            )
        if verify and _sha256(path) != entry["sha256"]:
            raise TrainError(
                f"{path} does not match its sha256 in {MANIFEST_NAME}: the file is corrupt or altered; "
                "re-run `tokenworks ingest`"
            )
    if "train" not in splits:
        raise TrainError(f"{manifest_path} has no train split")
    train = TokenShards(directory, "train")
    validation = TokenShards(directory, "validation") if "validation" in splits else None
    if validation is not None and validation.tokens == 0:
        validation = None
    return ShardData(directory, manifest, hashlib.sha256(raw).hexdigest(), train, validation, vocab_size)


def check_token_range(data: ShardData, vocab_size: int) -> None:
    """Every token id must index the model's embedding table."""
    if data.vocab_size > vocab_size:
        raise TrainError(
            f"the tokenizer has {data.vocab_size} tokens but the model only {vocab_size}: "
            f"raise --vocab-size to at least {data.vocab_size} or leave it out"
        )
    for split in (data.train, data.validation):
        for array in split.shard_arrays() if split is not None else []:
            if len(array) and int(array.max()) >= vocab_size:
                raise TrainError(
                    f"the shards hold token id {int(array.max())}, outside the model's vocabulary of {vocab_size}"
                )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


class WindowSampler:
    """Random `context + 1`-token windows of the train split; `state_dict()` resumes it exactly."""

    def __init__(self, shards: TokenShards, context: int, seed: int, rank: int = 0, world_size: int = 1) -> None:
        self.arrays = [a for a in shards.shard_arrays() if len(a) > context + 1]
        if not self.arrays:
            longest = max((len(a) for a in shards.shard_arrays()), default=0)
            raise TrainError(
                f"no train shard is longer than the context ({context} tokens; the longest has {longest}): "
                "lower --context or ingest more text"
            )
        lengths = np.array([len(a) - context - 1 for a in self.arrays], dtype=np.float64)
        self.shard_weights = lengths / lengths.sum()
        self.context = context
        self.rank, self.world_size = rank, world_size
        self.rng = np.random.Generator(np.random.PCG64(seed))

    def next_batch(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, targets), each (batch_size, context) int64: this process's slice of the global batch."""
        total = batch_size * self.world_size
        shards = self.rng.choice(len(self.arrays), size=total, p=self.shard_weights)
        starts = [int(self.rng.integers(0, len(self.arrays[s]) - self.context - 1)) for s in shards]
        mine = range(self.rank * batch_size, (self.rank + 1) * batch_size)
        rows = np.stack([self.arrays[shards[i]][starts[i] : starts[i] + self.context + 1] for i in mine])
        windows = torch.from_numpy(rows.astype(np.int64))  # (B, T + 1)
        return windows[:, :-1], windows[:, 1:]

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]


def validation_windows(shards: TokenShards, context: int, max_tokens: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Consecutive non-overlapping windows of the validation split, the same at every evaluation.

    Each item is (inputs, targets) of shape (1, T); the last window of a shard may be shorter.
    """
    windows: list[tuple[torch.Tensor, torch.Tensor]] = []
    budget = max_tokens
    for array in shards.shard_arrays():
        for start in range(0, len(array) - 1, context):
            if budget <= 0:
                return windows
            chunk = torch.from_numpy(np.asarray(array[start : start + context + 1]).astype(np.int64))
            if len(chunk) < 2:
                continue
            windows.append((chunk[None, :-1], chunk[None, 1:]))
            budget -= len(chunk) - 1
    return windows
