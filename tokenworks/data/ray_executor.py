"""`RayExecutor`: the `Executor` that runs batch functions on a Ray cluster through Ray Data.

It owns the Ray connection (joining the cluster named by RAY_ADDRESS, or starting a quiet
local instance) and the translation between our records and Ray Data rows. The batch
functions themselves, and the batching rule, are the same as `LocalExecutor`'s, so both
executors return identical results.
"""

from __future__ import annotations

import logging
import os
import pickle
from collections.abc import Sequence
from typing import Any

from tokenworks.data.executor import BatchFunction, ProgressCallback, Record, batches
from tokenworks.errors import ConfigError

try:
    import ray
    import ray.data
except ImportError:  # pragma: no cover - exercised only where ray is absent
    ray = None


def _run_batch(row: dict[str, Any], function: BatchFunction) -> dict[str, Any]:
    """One Ray Data row in, one out: unpickle a batch, apply `function`, pickle the output."""
    records = pickle.loads(row["batch"])
    output = function(records)
    return {"index": row["index"], "count": len(records), "batch": pickle.dumps(output, pickle.HIGHEST_PROTOCOL)}


class RayExecutor:
    """Batches of records as Ray Data rows; one map task per batch, `workers` CPUs locally."""

    name = "ray"

    def __init__(self, workers: int = 1, batch_size: int = 256) -> None:
        if ray is None:
            raise ConfigError('--executor ray needs Ray Data; install it with: pip install "ray[data]"')
        if workers < 1:
            raise ConfigError(f"workers must be at least 1, got {workers}")
        if batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
        self.workers = workers
        self.batch_size = batch_size
        # Only the executor that called ray.init ends the session in close(): that stops a local
        # instance it started, or just disconnects from a cluster it joined (which keeps
        # running). A Ray someone else initialised in this process is left alone.
        self._owns_ray = False
        if not ray.is_initialized():
            # Workers' stdout/stderr stay in Ray's log files; task errors still raise here.
            quiet: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": False}
            address = os.environ.get("RAY_ADDRESS")
            if address:
                try:
                    ray.init(address=address, **quiet)
                except ConnectionError as error:
                    raise ConfigError(
                        f"cannot join the Ray cluster at RAY_ADDRESS={address}: {error}. A cluster"
                        " with token auth also needs RAY_AUTH_MODE=token and its token (RAY_AUTH_TOKEN)"
                    ) from error
            else:
                # "local" always starts a fresh instance; with no address, Ray would instead join
                # any cluster `ray start` left on this machine and reject num_cpus.
                ray.init(address="local", num_cpus=workers, include_dashboard=False, **quiet)
            self._owns_ray = True
        # Ray Data logs each dataset's plan and progress at INFO, and warns once that we turned
        # its progress bars off; the pipeline draws its own bar from `progress`.
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)

    def map_batches(
        self,
        function: BatchFunction,
        records: Sequence[Record],
        progress: ProgressCallback | None = None,
        batch_size: int | None = None,
    ) -> list[Record]:
        if not records:
            return []
        # Each row carries one whole batch, pickled. Records hold nested dicts whose keys
        # differ between records, bytes, None and mixed lists: Arrow would infer one schema
        # for a column and unify, pad or reject them, so pickling is the only form that
        # round-trips every record exactly. It also keeps the batching rule ours (the same
        # `batches` as LocalExecutor), whatever Ray Data's own block sizes are.
        rows = [
            {"index": index, "batch": pickle.dumps(batch, pickle.HIGHEST_PROTOCOL)}
            for index, batch in enumerate(batches(records, batch_size or self.batch_size))
        ]
        dataset = ray.data.from_items(rows, override_num_blocks=len(rows))
        # Our caller draws the progress bar (from `progress`); Ray Data's own would duplicate it.
        # Set on this dataset's copy of the context, so other datasets in the process keep theirs.
        dataset.context.enable_progress_bars = False
        mapped = dataset.map(_run_batch, fn_kwargs={"function": function})
        # Without preserve_order, batches arrive as they finish (no head-of-line blocking, and
        # progress moves as work completes); each carries its index to be put back in place.
        outputs: dict[int, list[Record]] = {}
        for row in mapped.iter_rows():
            outputs[int(row["index"])] = pickle.loads(row["batch"])
            if progress:
                progress(int(row["count"]))
        if len(outputs) != len(rows):
            raise RuntimeError(f"Ray Data returned {len(outputs)} of {len(rows)} batches")
        # The index, not the arrival order, decides where each batch's output goes.
        return [record for index in range(len(rows)) for record in outputs[index]]

    def close(self) -> None:
        if self._owns_ray and ray.is_initialized():
            ray.shutdown()
        self._owns_ray = False
