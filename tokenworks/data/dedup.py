"""Deduplication: exact (a hash of the normalised text), then near (MinHash LSH).

Both keep the first document, in corpus order, of each group of duplicates, and mark the
others as rejected with the id of the document they duplicate.
"""

from __future__ import annotations

import hashlib
from functools import partial

import numpy as np

from tokenworks.data.executor import Executor, ProgressCallback
from tokenworks.data.minhash import MinHashParameters, duplicate_clusters, signatures
from tokenworks.data.records import Record, rejection


def exact_duplicates(records: list[Record]) -> list[Record]:
    """Records in order; a repeat of an earlier text becomes a rejection naming the first one."""
    first_index: dict[bytes, int] = {}
    out = []
    for index, record in enumerate(records):
        first = first_index.setdefault(hashlib.sha256(record["text"].encode()).digest(), index)
        if first == index:
            out.append(record)
        else:
            original = records[first]["id"]
            out.append(rejection(record, "exact_dedup", f"same text as {original}", duplicate_of=original))
    return out


def signature_batch(records: list[Record], parameters: MinHashParameters) -> list[Record]:
    """Batch function: one {"signature": bytes} record per input, in order."""
    matrix = signatures([record["text"] for record in records], parameters)
    return [{"signature": row.tobytes()} for row in matrix]


def near_duplicates(
    records: list[Record],
    parameters: MinHashParameters,
    executor: Executor,
    progress: ProgressCallback | None = None,
) -> list[Record]:
    """Records in order, each member of a near-duplicate cluster but its first marked rejected."""
    rows = executor.map_batches(partial(signature_batch, parameters=parameters), records, progress)
    matrix = np.frombuffer(b"".join(row["signature"] for row in rows), dtype=np.uint64)
    matrix = matrix.reshape(len(records), parameters.num_permutations)
    roots, similarity = duplicate_clusters(matrix, [record["text"] for record in records], parameters)
    out = []
    for index, (record, root) in enumerate(zip(records, roots.tolist(), strict=True)):
        if root == index:
            out.append(record)
            continue
        reason = f"near-duplicate of {records[root]['id']} (Jaccard {similarity[index]:.3f} with a cluster member)"
        out.append(rejection(record, "near_dedup", reason, duplicate_of=records[root]["id"]))
    return out
