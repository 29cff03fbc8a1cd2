"""One local Ray for the data tests that run on it: starting Ray and its first workers takes seconds."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(scope="package")
def ray_instance() -> Iterator[object]:
    """A RayExecutor that started Ray (and stops it after the last data test); the executors the
    tests make join it and leave it running, as they leave any Ray someone else started."""
    pytest.importorskip("ray.data", reason='Ray Data is not installed (pip install "ray[data]")')
    from tokenworks.data.ray_executor import RayExecutor

    owner = RayExecutor(workers=2)
    yield owner
    owner.close()
