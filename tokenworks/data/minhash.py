"""MinHash signatures and LSH banding, vectorised with numpy.

A document's shingles are its overlapping `shingle_words`-word sequences (lower-cased
words, punctuation ignored). Each shingle hashes to 32 bits; each of bands x rows
multiply-shift hash functions `((a * h + b) mod 2^64) >> 32` maps the hashes, and the
signature keeps the minimum of each: two documents agree at one position with probability
close to the Jaccard similarity of their shingle sets.

Banding (`bands` groups of `rows` positions) makes documents that agree on a whole band
candidates. With the default 20 bands x 5 rows, a pair at Jaccard 0.8 becomes a candidate
with probability 1 - (1 - 0.8^5)^20 = 0.9997, so the banding loses almost nothing; each
candidate pair is then confirmed on the exact Jaccard similarity of its shingle sets, so
the threshold means what it says (an estimate from 100 positions would miss about a
third of the pairs just above it).
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass

import numpy as np

_WORD = re.compile(r"\w+")
_SHIFT_32 = np.uint64(32)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)  # an odd 64-bit multiplier that mixes bits well
_BLOCK_SHINGLES = 4096


@dataclass(frozen=True, slots=True)
class MinHashParameters:
    shingle_words: int = 5
    bands: int = 20
    rows: int = 5
    jaccard_threshold: float = 0.8
    seed: int = 1

    @property
    def num_permutations(self) -> int:
        return self.bands * self.rows

    def hash_functions(self) -> tuple[np.ndarray, np.ndarray]:
        """(a, b), each (num_permutations,) uint64; a is odd, as multiply-shift hashing needs."""
        generator = np.random.default_rng(self.seed)
        a = generator.integers(0, 1 << 63, self.num_permutations, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
        b = generator.integers(0, 1 << 63, self.num_permutations, dtype=np.uint64)
        return a, b


def shingle_hashes(text: str, shingle_words: int) -> np.ndarray:
    """(S,) uint64 holding 32-bit hashes of the text's word shingles (one shingle if it is shorter)."""
    words = _WORD.findall(text.lower())
    if not words:
        return np.zeros(1, dtype=np.uint64)
    word_hashes = np.fromiter((zlib.crc32(w.encode()) for w in words), dtype=np.uint64, count=len(words))
    n = min(shingle_words, len(word_hashes))
    count = len(word_hashes) - n + 1
    # Fold n consecutive word hashes in, multiplying after each (wrapping at 2^64), so every
    # word reaches the top 32 bits, which are kept.
    combined = np.zeros(count, dtype=np.uint64)
    for offset in range(n):
        combined = (combined ^ word_hashes[offset : offset + count]) * _GOLDEN
    return combined >> _SHIFT_32


def signatures(texts: list[str], parameters: MinHashParameters) -> np.ndarray:
    """(D, bands * rows) uint64 MinHash signatures, one row per text."""
    a, b = parameters.hash_functions()
    result = np.empty((len(texts), parameters.num_permutations), dtype=np.uint64)
    hashes = [shingle_hashes(text, parameters.shingle_words) for text in texts]
    # Hash a few thousand shingles at a time, in place: the (shingles, P) block stays in cache.
    start = 0
    while start < len(hashes):
        stop, shingles = start, 0
        while stop < len(hashes) and (stop == start or shingles + len(hashes[stop]) <= _BLOCK_SHINGLES):
            shingles += len(hashes[stop])
            stop += 1
        block = np.concatenate(hashes[start:stop])[:, None]  # (shingles, 1)
        hashed = np.multiply(block, a)  # (shingles, P), wrapping at 2^64 by design
        hashed += b
        hashed >>= _SHIFT_32
        offsets = np.cumsum([0] + [len(h) for h in hashes[start : stop - 1]])
        result[start:stop] = np.minimum.reduceat(hashed, offsets, axis=0)
        start = stop
    return result


def jaccard(first: np.ndarray, second: np.ndarray) -> float:
    """Exact Jaccard similarity of two shingle-hash arrays, as sets."""
    a, b = np.unique(first), np.unique(second)
    shared = len(np.intersect1d(a, b, assume_unique=True))
    return shared / (len(a) + len(b) - shared)


def duplicate_clusters(
    signature_matrix: np.ndarray, texts: list[str], parameters: MinHashParameters
) -> tuple[np.ndarray, dict[int, float]]:
    """For each document, the index of the first document of its near-duplicate cluster, and
    for each document in a cluster, the Jaccard similarity of the first pair that put it there.

    A document that is its own root is kept; any other is a near-duplicate of its root.
    """
    count = len(signature_matrix)
    parent = np.arange(count)
    similarity: dict[int, float] = {}
    if count < 2:
        return parent, similarity
    first, second = _candidate_pairs(signature_matrix, parameters)
    shingles: dict[int, np.ndarray] = {}  # computed only for documents in a candidate pair
    for i, j in zip(first.tolist(), second.tolist(), strict=True):
        for index in (i, j):
            if index not in shingles:
                shingles[index] = shingle_hashes(texts[index], parameters.shingle_words)
        score = jaccard(shingles[i], shingles[j])
        if score >= parameters.jaccard_threshold:
            _union(parent, i, j)
            similarity.setdefault(i, score)
            similarity.setdefault(j, score)
    return np.array([_find(parent, i) for i in range(count)]), similarity


def _candidate_pairs(signature_matrix: np.ndarray, parameters: MinHashParameters) -> tuple[np.ndarray, np.ndarray]:
    """Unique (i, j), i < j, of documents equal on at least one band.

    Within a group of equal band keys each member is paired with the group's first member
    and with its predecessor: enough to connect a cluster without all pairs of a large one.
    """
    count = len(signature_matrix)
    bands = signature_matrix.reshape(count, parameters.bands, parameters.rows)
    # One 64-bit key per band: a wrapping polynomial of its rows (collisions are confirmed later).
    weights = np.uint64(0x9E3779B97F4A7C15) ** np.arange(parameters.rows, dtype=np.uint64)
    keys = (bands * weights).sum(axis=2, dtype=np.uint64)  # (D, bands)
    codes = []
    for band in range(parameters.bands):
        order = np.argsort(keys[:, band], kind="stable")
        sorted_keys = keys[order, band]
        continues = np.concatenate(([False], sorted_keys[1:] == sorted_keys[:-1]))  # same group as previous
        positions = np.arange(count)
        group_start = np.maximum.accumulate(np.where(continues, 0, positions))
        members = np.flatnonzero(continues)
        for partner in (group_start[members], members - 1):
            i, j = order[partner], order[members]
            codes.append(np.minimum(i, j).astype(np.int64) * count + np.maximum(i, j))
    unique = np.unique(np.concatenate(codes)) if codes else np.zeros(0, dtype=np.int64)
    return unique // count, unique % count


def _find(parent: np.ndarray, i: int) -> int:
    root = i
    while parent[root] != root:
        root = parent[root]
    while parent[i] != root:  # path compression
        parent[i], i = root, parent[i]
    return int(root)


def _union(parent: np.ndarray, i: int, j: int) -> None:
    """Join two clusters under the smaller index, so every root is its cluster's first document."""
    root_i, root_j = _find(parent, i), _find(parent, j)
    if root_i != root_j:
        parent[max(root_i, root_j)] = min(root_i, root_j)
