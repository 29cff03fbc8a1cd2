"""The engine benchmark's turn-taking (benchmarks/engine_peers_worker.py's Turns): two workers
loaded side by side alternate strictly, and "*" frees a worker whose peer has ended."""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path

import pytest

WORKER = Path(__file__).resolve().parent.parent / "benchmarks" / "engine_peers_worker.py"


@pytest.fixture
def worker(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(WORKER.parent))  # as when run: its sibling modules import
    spec = importlib.util.spec_from_file_location("engine_peers_worker", WORKER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "TURN_SETTLE_SECONDS", 0.0)
    return module


def test_two_workers_alternate_step_by_step(worker, tmp_path: Path) -> None:
    turn_file = tmp_path / "turn"
    turn_file.write_text("a")
    order: list[str] = []

    def work(me: str, other: str) -> None:
        turns = worker.Turns()
        turns.use({"file": str(turn_file), "me": me, "other": other})
        for step in range(3):
            turns.take()
            order.append(f"{me}{step}")
            turns.give()

    threads = [threading.Thread(target=work, args=pair, daemon=True) for pair in (("b", "a"), ("a", "b"))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert order == ["a0", "b0", "a1", "b1", "a2", "b2"]
    assert turn_file.read_text() == "a"


def test_a_freed_turn_lets_anyone_on_and_stays_free(worker, tmp_path: Path) -> None:
    turn_file = tmp_path / "turn"
    turn_file.write_text("other")  # the peer holds the turn, then ends: the driver writes "*"
    turns = worker.Turns()
    turns.use({"file": str(turn_file), "me": "me", "other": "other"})
    freed = threading.Timer(0.1, lambda: turn_file.write_text("*"))
    freed.start()
    turns.take()  # returns once freed
    turns.give()  # keeps "*": nobody is left to wait for
    assert turn_file.read_text() == "*"
    turns.take()


def test_without_a_spec_nothing_waits(worker, tmp_path: Path) -> None:
    turns = worker.Turns()
    turns.use(None)
    turns.take()
    turns.give()
    assert not list(tmp_path.iterdir())
