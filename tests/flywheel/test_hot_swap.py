"""`tokenworks models promote --serve` and `rollback --serve` while `tokenworks bench` is running on
the served name: no request fails, the promotion changes the answers, and after the rollback the
greedy answers are those from before the promotion, token for token. A base checkpoint cannot be
swapped in this way: refused, nothing recorded."""

from __future__ import annotations

import csv
import subprocess
import sys
import time

import httpx
import pytest

from tokenworks.flywheel.registry import Registry

from ..adapters import make_adapter
from ..serve.conftest import metric_value, serve_model_dir, start_server  # noqa: F401 (a fixture)

SERVED = "docs"
BENCH_SECONDS = 15  # from its first answers: the two swaps and three greedy answers take a few seconds here
PROMPTS = ["The Python language", "What does `str.split` do?", "import json"]


@pytest.fixture(scope="module")
def fleet(serve_model_dir, tmp_path_factory):  # noqa: F811 (the fixture imported above)
    root = tmp_path_factory.mktemp("hot-swap")
    adapters = [make_adapter(serve_model_dir, root / name, 4, ("q_proj", "v_proj"), seed) for name, seed in
                (("a", 1), ("b", 2))]  # fmt: skip
    registry = Registry(root / "registry.db")
    registry.register(serve_model_dir)  # version 1: the base checkpoint
    for adapter in adapters:  # versions 2 and 3
        registry.register(adapter, base=serve_model_dir)
    server = start_server(serve_model_dir)
    yield root, server
    server.stop()


def models(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tokenworks", "models", *args], capture_output=True, text=True,
                          timeout=120)  # fmt: skip


def greedy(url: str) -> list[list[str]]:
    """The served name's greedy tokens for each prompt."""
    answers = []
    for prompt in PROMPTS:
        body = {"model": SERVED, "prompt": prompt, "max_tokens": 16, "temperature": 0, "logprobs": 0}
        choice = httpx.post(f"{url}/v1/completions", json=body, timeout=60).json()["choices"][0]
        answers.append(choice["logprobs"]["tokens"])
    return answers


def answered(url: str) -> float:
    return metric_value(httpx.get(f"{url}/metrics", timeout=10).text, "tokenworks:request_success_total")


def wait_for_load(url: str, bench: subprocess.Popen, before: float, timeout: float = 60.0) -> None:
    """Until the bench's requests reach the server: answers counted beyond `before`."""
    deadline = time.monotonic() + timeout
    while answered(url) <= before:
        assert bench.poll() is None and time.monotonic() < deadline, "the bench sent nothing"
        time.sleep(0.1)


def test_promote_and_rollback_under_load_fail_no_request(fleet) -> None:
    root, server = fleet
    registry = ["--registry", str(root / "registry.db")]
    swap = ["--serve", server.url, "--served-name", SERVED]
    assert models("promote", "2", *registry, *swap).returncode == 0
    before = greedy(server.url)
    counted = answered(server.url)
    bench = subprocess.Popen(
        [sys.executable, "-m", "tokenworks", "bench", "run", "--url", server.url, "--model", SERVED,
         "--api", "completions", "--input-tokens", "32", "--output-tokens", "16", "--concurrency", "4",
         "--duration", str(BENCH_SECONDS), "--warmup-requests", "0", "--out", str(root / "bench")],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_for_load(server.url, bench, counted)  # the bench's import and first requests: seconds, more on a busy host
        promoted = models("promote", "3", *registry, *swap, "--reason", "under load")
        assert promoted.returncode == 0, promoted.stderr
        during = greedy(server.url)
        rolled = models("rollback", *registry, *swap)
        assert rolled.returncode == 0, rolled.stderr
        assert bench.poll() is None, "the swaps must happen while the bench runs"
        after = greedy(server.url)
    finally:
        _, errors = bench.communicate(timeout=120)
    assert bench.returncode == 0, errors
    with (root / "bench" / "points.csv").open() as file:
        point = next(csv.DictReader(file))
    assert int(point["errors"]) == 0 and int(point["completed"]) > 0
    assert during != before  # the promotion changed what the name answers
    assert after == before  # the rollback put the same adapter back: token for token
    assert "champion is back to version 2 (was version 3)" in rolled.stdout
    assert [e.action for e in Registry(root / "registry.db").history("champion")] == ["promote", "promote", "rollback"]


def test_a_base_checkpoint_is_not_hot_swapped(fleet) -> None:
    root, server = fleet
    registry = ["--registry", str(root / "registry.db")]
    history = Registry(root / "registry.db").history()
    refused = models("promote", "1", *registry, "--serve", server.url, "--served-name", SERVED)
    assert refused.returncode == 1
    assert "version 1 (" in refused.stderr and "is a base checkpoint, not a LoRA adapter" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert Registry(root / "registry.db").history() == history  # nothing recorded
