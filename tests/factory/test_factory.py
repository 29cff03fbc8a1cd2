"""The whole line, as a user runs it: `tokenworks factory --quick` in a fresh work directory."""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

STAGES = ["ingest", "train", "serve", "bench", "report"]
BENCH_FILES = {"run.json", "requests.jsonl", "points.csv", "frontier.csv", "report.html"}


@pytest.fixture(scope="module")
def quick_run(quick_factory) -> tuple[Path, subprocess.CompletedProcess]:
    return quick_factory


def test_quick_line_runs_every_stage_and_reports(quick_run) -> None:
    workdir, result = quick_run
    assert result.returncode == 0, result.stderr[-3000:]
    assert "tokenworks factory" in result.stdout and "Pareto frontier" in result.stdout

    state = json.loads((workdir / "factory.json").read_text())
    assert [name for name, record in state["stages"].items() if record["status"] == "done"] == STAGES
    assert (workdir / "data" / "manifest.json").is_file()
    assert (workdir / "train" / "checkpoint" / "model.safetensors").is_file()
    assert (workdir / "train" / "loss.png").is_file()
    assert {path.name for path in (workdir / "bench").iterdir()} >= BENCH_FILES

    points = list(csv.DictReader((workdir / "bench" / "points.csv").open()))
    levels = [int(p["concurrency"]) for p in points]
    # The quick sweep is 1, 4, 16, stopping early where a level adds under 5% throughput (on 2
    # shared cores 4 can, by chance); run.json then says why.
    saturated = json.loads((workdir / "bench" / "run.json").read_text())["saturated"]
    assert len(levels) >= 2 and levels == [1, 4, 16][: len(levels)]
    assert len(levels) == 3 or saturated
    assert all(int(p["errors"]) == 0 for p in points)
    frontier = list(csv.DictReader((workdir / "bench" / "frontier.csv").open()))
    assert 1 <= len(frontier) <= len(points)

    page = (workdir / "report.html").read_text()
    for expected in ("Pareto frontier", "tokens per joule", "estimated", "data:image/png;base64", "goodput"):
        assert expected in page


def test_served_sample_is_the_checkpoints_greedy_continuation(quick_run) -> None:
    workdir, result = quick_run
    assert result.returncode == 0, result.stderr[-3000:]
    serve = json.loads((workdir / "factory.json").read_text())["stages"]["serve"]["summary"]
    checkpoint = workdir / "train" / "checkpoint"
    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    prompt_ids = tokenizer(serve["smoke_prompt"], add_special_tokens=False)["input_ids"]
    new_tokens = serve["smoke_usage"]["completion_tokens"]
    output = model.generate(torch.tensor([prompt_ids]), max_new_tokens=new_tokens, do_sample=False, eos_token_id=None)
    assert tokenizer.decode(output[0, len(prompt_ids) :]) == serve["smoke_completion"]


def test_rerun_resumes_and_from_reruns_only_the_named_stages(quick_run, run_factory) -> None:
    workdir, first = quick_run
    assert first.returncode == 0, first.stderr[-3000:]
    again = run_factory("--quick", "--workdir", str(workdir), timeout=120)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("done earlier, kept") == len(STAGES)

    before = (workdir / "report.html").stat().st_mtime_ns
    report_only = run_factory("--quick", "--workdir", str(workdir), "--from", "report", timeout=120)
    assert report_only.returncode == 0, report_only.stderr[-3000:]
    assert report_only.stdout.count("done earlier, kept") == len(STAGES) - 1
    assert (workdir / "report.html").stat().st_mtime_ns > before


def test_a_failed_stage_says_which_and_why_without_a_traceback(tmp_path: Path, run_factory) -> None:
    config = tmp_path / "factory.toml"
    config.write_text('[data]\nsources = ["no-such-directory"]\n', encoding="utf-8")
    result = run_factory("--quick", "--config", str(config), "--workdir", str(tmp_path / "w"), timeout=120)
    assert result.returncode == 1
    assert "stage 'ingest' failed" in result.stderr and "no-such-directory" in result.stderr
    assert "Traceback" not in result.stderr
    state = json.loads((tmp_path / "w" / "factory.json").read_text())
    assert state["stages"]["ingest"]["status"] == "failed"
