"""The command line as users run it (real subprocesses), and data-parallel parity under torchrun + gloo."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file
from torch.testing import assert_close

RUN = [
    "--preset",
    "nano",
    "--context",
    "32",
    "--max-steps",
    "4",
    "--warmup",
    "1",
    "--lr",
    "3e-3",
    "--eval-interval",
    "2",
]


def _run(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    # One thread per process: two gloo workers on a 2-core machine must not oversubscribe it.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, env=env)


def _losses(out: Path) -> list[float]:
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in lines if r["kind"] == "train"]


def test_ddp_two_processes_match_one_process_on_the_same_global_batch(shards_dir: Path, tmp_path: Path) -> None:
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    one = _run("-m", "tokenworks", "train", "--data", str(shards_dir), "--out", str(single), *RUN, "--batch-size", "4")
    assert one.returncode == 0, one.stderr
    assert "tokenworks train pretrain" in one.stdout  # the summary table
    two = _run(
        "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "tokenworks.train",
        "--data", str(shards_dir), "--out", str(ddp), *RUN, "--batch-size", "2",
    )  # fmt: skip
    assert two.returncode == 0, two.stderr

    assert len(_losses(single)) == 4
    assert_close(_losses(ddp), _losses(single), rtol=1e-5, atol=1e-5)
    record = json.loads((ddp / "run.json").read_text())
    assert record["environment"]["world_size"] == 2 and record["tokens_seen"] == 4 * 4 * 32
    ours, theirs = (load_file(out / "checkpoint" / "model.safetensors") for out in (ddp, single))
    # Adam divides each step by the root of the gradient's second moment, so an element whose gradient
    # is near zero moves on the all-reduce's float rounding alone (1.6e-5 on one of nano's 27,648 MLP
    # weights); a wrong batch or shard moves weights by about lr (3e-3) a step.
    for name, tensor in theirs.items():
        assert_close(ours[name], tensor, rtol=1e-4, atol=1e-4)


def test_cli_error_is_one_line_before_any_work(shards_copy: Path, tmp_path: Path) -> None:
    (shards_copy / "shards" / "train-00000.bin").write_bytes(b"\x00" * 10)
    result = _run("-m", "tokenworks", "train", "--data", str(shards_copy), "--out", str(tmp_path / "out"), *RUN)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert (
        "error:" in result.stderr
        and "train-00000.bin" in result.stderr
        and "re-run `tokenworks ingest`" in result.stderr
    )
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--time-budget", "5 minutes"], "cannot read the duration"),
        (["--preset", "huge"], "unknown preset 'huge'"),
        (["--hidden", "64", "--heads", "3"], "head_dim must be even"),
    ],
)
def test_cli_refuses_bad_arguments(shards_dir: Path, tmp_path: Path, args: list[str], message: str) -> None:
    result = _run("-m", "tokenworks.train", "--data", str(shards_dir), "--out", str(tmp_path / "out"), *args)
    assert result.returncode == 1 and message in result.stderr and "Traceback" not in result.stderr


def test_sft_cli_reports_bad_lines(trained_checkpoint: Path, tmp_path: Path) -> None:
    chat = tmp_path / "chat.jsonl"
    chat.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n[1, 2]\n')
    result = _run(
        "-m", "tokenworks", "train", "sft", "--base", str(trained_checkpoint), "--data", str(chat),
        "--out", str(tmp_path / "out"), "--lora-rank", "4",
    )  # fmt: skip
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "line 1: no assistant message" in result.stderr and "line 2:" in result.stderr
