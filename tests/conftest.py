"""Shared fixtures: a small tokenizer trained once per session on the default corpus, one small
ingest of it, and one `tokenworks factory --quick` run whose work directory the factory tests and
the README's examples read.

That run pretrains for QUICK_TRAIN_SECONDS instead of --quick's 45 s: the tests read what each
stage writes (a checkpoint, its loss curve, what it serves), never how far the loss fell, and the
other 33 s of training were a third of the run."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tokenworks.data import python_docs
from tokenworks.model import Tokenizer


@pytest.fixture(scope="session")
def corpus() -> list[str]:
    return [doc.text for doc in itertools.islice(python_docs(include_modules=False), 40)]


@pytest.fixture(scope="session")
def tokenizer(corpus: list[str]) -> Tokenizer:
    return Tokenizer.train(corpus, vocab_size=700)


QUICK_TRAIN_SECONDS = 12.0


def _factory(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "tokenworks", "factory", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def shards_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`tokenworks ingest` on the first 60 documents of the default corpus, a 512-token vocabulary
    (the training and flywheel tests read it; none writes to it)."""
    from tokenworks.data.pipeline import IngestOptions, run_ingest

    out = tmp_path_factory.mktemp("ingest")
    run_ingest(IngestOptions(out=out, workers=1, limit=60, vocab_size=512, validation_fraction=0.1))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["shards"]["tokens"]["validation"] > 0
    return out


@pytest.fixture(scope="session")
def run_factory():
    """`tokenworks factory ARGS...` as a user runs it: a function returning the finished process."""
    return _factory


@pytest.fixture(scope="session")
def quick_config(tmp_path_factory) -> Path:
    """The --config file of the session's quick line: --quick's settings, but QUICK_TRAIN_SECONDS of
    pretraining (a test that runs the line again on its work directory passes it too, or the train
    stage's settings differ and every stage runs again)."""
    path = tmp_path_factory.mktemp("quick-config") / "factory.toml"
    path.write_text(f"[train]\ntime_budget_s = {QUICK_TRAIN_SECONDS}\n", encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def quick_factory(tmp_path_factory, quick_config: Path) -> tuple[Path, subprocess.CompletedProcess]:
    """`tokenworks factory --quick --config QUICK_CONFIG` into DIR/factory, as `make demo` writes
    ./factory (the README's paths)."""
    workdir = tmp_path_factory.mktemp("quick") / "factory"
    return workdir, _factory("--quick", "--config", str(quick_config), "--workdir", str(workdir))
