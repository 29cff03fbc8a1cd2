"""Executors run a per-record function over many records, in parallel, in order.

The ingest pipeline's per-document stages (read, clean, MinHash signatures) are pure
functions of a batch of records, so they can run anywhere: in worker processes on this
machine (`LocalExecutor`, the default) or on a Ray cluster (`RayExecutor` in ray_executor.py,
for corpora larger than one machine); the pipeline picks one by name. A record is a plain
dict, so it crosses any process boundary.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Protocol

from tokenworks.errors import ConfigError

Record = dict[str, Any]
# A batch function: records in, records out (any number per input: a reader yields many).
BatchFunction = Callable[[list[Record]], list[Record]]
# Called after each batch with the number of input records it consumed (drives progress bars).
ProgressCallback = Callable[[int], None]


class Executor(Protocol):
    name: str

    def map_batches(
        self,
        function: BatchFunction,
        records: Sequence[Record],
        progress: ProgressCallback | None = None,
        batch_size: int | None = None,
    ) -> list[Record]:
        """`function` over consecutive batches of `records` (of `batch_size`, else the executor's);
        outputs concatenated in input order."""
        ...

    def close(self) -> None: ...


def batches(records: Sequence[Record], size: int) -> Iterator[list[Record]]:
    for start in range(0, len(records), size):
        yield list(records[start : start + size])


class LocalExecutor:
    """Worker processes on this machine; with one worker, everything runs in this process."""

    name = "local"

    def __init__(self, workers: int = 1, batch_size: int = 256) -> None:
        if workers < 1:
            raise ConfigError(f"workers must be at least 1, got {workers}")
        self.workers = workers
        self.batch_size = batch_size
        self._pool: ProcessPoolExecutor | None = None

    def map_batches(
        self,
        function: BatchFunction,
        records: Sequence[Record],
        progress: ProgressCallback | None = None,
        batch_size: int | None = None,
    ) -> list[Record]:
        results: list[Record] = []
        size = batch_size or self.batch_size
        if self.workers == 1:
            for batch in batches(records, size):
                results.extend(function(batch))
                if progress:
                    progress(len(batch))
            return results
        pool = self._ensure_pool()
        pending = list(batches(records, size))
        # map keeps input order while workers run ahead. A worker that dies (or cannot unpickle
        # the function) raises BrokenProcessPool here, where multiprocessing.Pool would hang.
        for batch, output in zip(pending, pool.map(function, pending), strict=True):
            results.extend(output)
            if progress:
                progress(len(batch))
        return results

    def _ensure_pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            # forkserver: workers start clean, never inheriting a parent's threads or locks mid-use.
            context = multiprocessing.get_context("forkserver")
            self._pool = ProcessPoolExecutor(self.workers, mp_context=context)
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
