"""Token shards: the training data on disk, read back with `numpy.memmap`.

Each split is a list of shards. A shard is two raw little-endian files:
- `{split}-{n:05d}.bin`: the token ids of its documents, one after another, each document
  ending with the end-of-text token; uint16 when the vocabulary fits in 65,536 ids,
  else uint32;
- `{split}-{n:05d}.idx`: uint64 offsets into the tokens, one per document plus the end,
  so document i is `tokens[idx[i]:idx[i + 1]]`.
A document never spans two shards. `manifest.json` beside the shards lists them, with the
dtype, counts and sha256 of every file.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tokenworks.errors import TokenworksError

MANIFEST_NAME = "manifest.json"
SHARDS_DIR = "shards"


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


@dataclass(slots=True)
class ShardInfo:
    tokens_file: str
    index_file: str
    documents: int
    tokens: int


class ShardWriter:
    """Appends documents' token ids to a split's shards, starting a new shard past a size."""

    def __init__(self, directory: Path, split: str, dtype: np.dtype, max_tokens_per_shard: int) -> None:
        self.directory = directory
        self.split = split
        self.dtype = dtype
        self.max_tokens = max_tokens_per_shard
        self.shards: list[ShardInfo] = []
        self._pending: list[np.ndarray] = []
        self._pending_tokens = 0

    def add(self, token_ids: list[int]) -> None:
        self._pending.append(np.asarray(token_ids, dtype=self.dtype))
        self._pending_tokens += len(token_ids)
        if self._pending_tokens >= self.max_tokens:
            self._flush()

    def close(self) -> list[ShardInfo]:
        if self._pending or not self.shards:  # an empty split still gets one (empty) shard
            self._flush()
        return self.shards

    def _flush(self) -> None:
        name = f"{self.split}-{len(self.shards):05d}"
        lengths = np.fromiter((len(doc) for doc in self._pending), dtype=np.uint64, count=len(self._pending))
        offsets = np.concatenate(([0], np.cumsum(lengths))).astype("<u8")
        tokens = np.concatenate(self._pending) if self._pending else np.zeros(0, dtype=self.dtype)
        tokens.astype(self.dtype.newbyteorder("<")).tofile(self.directory / f"{name}.bin")
        offsets.tofile(self.directory / f"{name}.idx")
        self.shards.append(ShardInfo(f"{name}.bin", f"{name}.idx", len(self._pending), int(offsets[-1])))
        self._pending, self._pending_tokens = [], 0


class TokenShards:
    """One split of an ingest output, memory-mapped: `len`, `document(i)`, iteration, `tokens`."""

    def __init__(self, output_dir: str | Path, split: str = "train") -> None:
        output_dir = Path(output_dir)
        manifest_path = output_dir / MANIFEST_NAME
        if not manifest_path.is_file():
            raise TokenworksError(f"{manifest_path} not found: run `tokenworks ingest --out {output_dir}` first")
        manifest = json.loads(manifest_path.read_text())
        shards = manifest["shards"]
        if split not in shards["splits"]:
            raise TokenworksError(f"split {split!r} not in {manifest_path}; it has {', '.join(shards['splits'])}")
        dtype = np.dtype(shards["dtype"]).newbyteorder("<")
        directory = output_dir / SHARDS_DIR
        self._tokens = [_map_tokens(directory / s["tokens_file"], dtype) for s in shards["splits"][split]]
        self._offsets = [np.fromfile(directory / s["index_file"], dtype="<u8") for s in shards["splits"][split]]
        counts = [len(offsets) - 1 for offsets in self._offsets]
        self._first_document = np.concatenate(([0], np.cumsum(counts)))
        self.eos_token_id: int = manifest["tokenizer"]["eos_token_id"]

    def __len__(self) -> int:
        return int(self._first_document[-1])

    @property
    def tokens(self) -> int:
        return sum(len(t) for t in self._tokens)

    def document(self, index: int) -> np.ndarray:
        """The token ids of document `index` (ending with the end-of-text token)."""
        if not 0 <= index < len(self):
            raise IndexError(f"document {index} out of range (0..{len(self) - 1})")
        shard = int(np.searchsorted(self._first_document, index, side="right")) - 1
        local = index - int(self._first_document[shard])
        offsets = self._offsets[shard]
        return self._tokens[shard][int(offsets[local]) : int(offsets[local + 1])]

    def __iter__(self) -> Iterator[np.ndarray]:
        return (self.document(i) for i in range(len(self)))

    def shard_arrays(self) -> list[np.ndarray]:
        """Each shard's token array, memory-mapped (for sampling training windows)."""
        return list(self._tokens)


def _map_tokens(path: Path, dtype: np.dtype) -> np.ndarray:
    # mmap refuses empty files, and an empty split has one empty shard.
    if path.stat().st_size == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r")
