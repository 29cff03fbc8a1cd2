"""RayExecutor against a real local Ray instance: same results as LocalExecutor, in order."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("ray.data", reason='Ray Data is not installed (pip install "ray[data]")')

from ray import cloudpickle

from tokenworks.data.executor import LocalExecutor, Record
from tokenworks.data.pipeline import make_executor
from tokenworks.data.ray_executor import RayExecutor

# Ray 2.60 copies its DataContext per dataset, and the copy trips its own deprecation shims.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context")

BATCH_SIZE = 16


@pytest.fixture(scope="module")
def importable_tests() -> Iterator[None]:
    # Worker processes must unpickle `split_words`, defined here. The LocalExecutor pool imports
    # this module by the name pytest gave it (`data.test_ray_executor`, under
    # --import-mode=importlib), which needs tests/ on the sys.path its workers copy from ours;
    # Ray workers do not copy it, so Ray's cloudpickle sends this module's functions by value.
    module = sys.modules[__name__]
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(Path(__file__).parents[1]))
        cloudpickle.register_pickle_by_value(module)
        try:
            yield
        finally:
            cloudpickle.unregister_pickle_by_value(module)


@pytest.fixture(scope="module")
def ray_executor(importable_tests: None, ray_instance: RayExecutor) -> Iterator[RayExecutor]:
    # One executor for the module, on the data tests' Ray (conftest.py), which started and stops it.
    executor = RayExecutor(workers=2, batch_size=BATCH_SIZE)
    yield executor
    executor.close()


def make_records(count: int) -> list[Record]:
    records = []
    for index in range(count):
        metadata: dict = {"index": index, f"only_{index % 5}": [index, index + 1]}
        if index % 3 == 0:
            metadata["nested"] = {"raw": bytes([index % 256, 0, 255]), "missing": None}
        records.append(
            {
                "id": f"doc-{index}",
                "text": " ".join(f"w{index}_{word}" for word in range(index % 4)),
                "source": "bytes" if index % 2 else None,
                "metadata": metadata,
                "score": index / 7,
                "payload": b"\x00" * (index % 3),
            }
        )
    return records


def split_words(batch: list[Record]) -> list[Record]:
    """One record per word; records without words vanish, so outputs vary per batch."""
    output = []
    for record in batch:
        for position, word in enumerate(record["text"].split()):
            output.append({**record, "id": f"{record['id']}/{position}", "text": word, "batch_length": len(batch)})
    return output


def test_matches_local_executor_exactly(ray_executor: RayExecutor) -> None:
    records = make_records(500)
    expected = LocalExecutor(workers=1, batch_size=BATCH_SIZE).map_batches(split_words, records)
    pool = LocalExecutor(workers=2, batch_size=BATCH_SIZE)
    try:
        assert pool.map_batches(split_words, records) == expected
    finally:
        pool.close()
    assert expected and len(expected) != len(records)
    assert ray_executor.map_batches(split_words, records) == expected


def test_progress_counts_every_input_record(ray_executor: RayExecutor) -> None:
    counts: list[int] = []
    ray_executor.map_batches(split_words, make_records(100), progress=counts.append)
    assert sum(counts) == 100
    assert sorted(counts) == [4] + [BATCH_SIZE] * 6


def test_empty_input(ray_executor: RayExecutor) -> None:
    counts: list[int] = []
    assert ray_executor.map_batches(split_words, [], progress=counts.append) == []
    assert counts == []


def test_make_executor_returns_ray_executor(ray_executor: RayExecutor) -> None:
    # Ray is already running (the fixture started it), so this one joins it and leaves it be.
    executor = make_executor("ray", 2)
    try:
        assert isinstance(executor, RayExecutor)
        assert executor.name == "ray"
        assert executor.workers == 2
    finally:
        executor.close()
    assert ray_executor.map_batches(split_words, make_records(3)) == split_words(make_records(3))
