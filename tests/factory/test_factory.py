"""The whole line, as a user runs it: `tokenworks factory --quick` in a fresh work directory."""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest
import torch
from rich.console import Console
from transformers import AutoModelForCausalLM, AutoTokenizer

from tokenworks.factory import pipeline
from tokenworks.factory.config import FactoryConfig
from tokenworks.factory.shared_prefix import CHART_CAPTION as SHARED_PREFIX_CAPTION
from tokenworks.plan.hardware import Catalog

STAGES = ["ingest", "train", "serve", "bench", "flywheel", "plan", "report"]
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
    # the plan stage: the simulator validated against this sweep, and the workload priced per GPU
    plan = state["stages"]["plan"]["summary"]
    assert [row["gpu"] for row in plan["costs"]] == Catalog.load().names
    assert set(plan["validation"]) >= {"ttft_p50_s", "tpot_p50_s"} and (workdir / "plan" / "profile.json").is_file()
    assert "Plan: this workload on each GPU" in page


def test_quick_line_serves_two_workers_behind_the_router(quick_run) -> None:
    workdir, result = quick_run
    assert result.returncode == 0, result.stderr[-3000:]
    stages = json.loads((workdir / "factory.json").read_text())["stages"]
    serve = stages["serve"]["summary"]
    assert (serve["workers"], serve["router_policy"]) == (2, "kv")
    assert serve["dashboard"] == serve["url"] + "/dashboard"
    assert [worker["id"] for worker in serve["fleet"]] == ["w0", "w1"]
    assert all(worker["healthy"] and worker["url"].startswith("http://127.0.0.1:") for worker in serve["fleet"])
    assert sum(worker["served"] for worker in serve["fleet"]) == 1  # the smoke completion
    sweep_fleet = stages["bench"]["summary"]["sweep_fleet"]
    assert [worker["id"] for worker in sweep_fleet] == ["w0", "w1"]
    points = list(csv.DictReader((workdir / "bench" / "points.csv").open()))
    warmup = json.loads((workdir / "bench" / "run.json").read_text())["load"]["warmup_requests"]
    measured = sum(int(point["requests"]) for point in points) + warmup * len(points)
    assert sum(worker["served"] for worker in sweep_fleet) == 1 + measured


def test_quick_line_compares_kv_and_round_robin_on_shared_prefixes(quick_run) -> None:
    workdir, result = quick_run
    assert result.returncode == 0, result.stderr[-3000:]
    bench = json.loads((workdir / "factory.json").read_text())["stages"]["bench"]["summary"]
    saved = json.loads((workdir / "bench" / "shared_prefix.json").read_text())
    shared = bench["shared_prefix"]
    assert {key: shared[key] for key in saved} == saved
    assert shared["settings"] == {
        "num_prefixes": 4, "questions_per_prefix": 4, "prefix_tokens": 256, "question_tokens": "16",
        "output_tokens": "16", "concurrency": 4, "seed": 0, "workers": 2,
    }  # fmt: skip
    assert shared["requests"] == 16 and shared["skipped"] is None
    assert list(shared["policies"]) == ["kv", "round-robin"]
    records = [json.loads(line) for line in (workdir / "bench" / "shared_prefix_requests.jsonl").open()]
    for policy, run in shared["policies"].items():
        assert run["policy"] == policy
        assert (run["requests"], run["completed"], run["errors"]) == (16, 16, 0)
        assert [worker["id"] for worker in run["workers"]] == ["w0", "w1"]
        assert sum(worker["served"] for worker in run["workers"]) == 16
        assert sum(sum(worker["decisions"].values()) for worker in run["workers"]) == 16
        if policy == "round-robin":
            assert all(set(worker["decisions"]) == {"turn"} for worker in run["workers"])
        mine = [record for record in records if record["policy"] == policy]
        assert len(mine) == 16 and not any(record["warmup"] for record in mine)
        # the router's prompt tokens (the workers' usage) are those the load generator was told of
        assert run["prompt_tokens"] == sum(record["input_tokens"] for record in mine)
        assert run["prompt_tokens"] == sum(worker["prompt_tokens"] for worker in run["workers"])
        assert run["cached_tokens"] == sum(worker["cached_tokens"] for worker in run["workers"])
        assert 0 <= run["hit_rate"] <= 1 and run["hit_rate"] == round(run["cached_tokens"] / run["prompt_tokens"], 4)
        for worker in run["workers"]:
            assert worker["hit_rate"] is None if worker["served"] == 0 else 0 <= worker["hit_rate"] <= 1
        assert 0 < run["ttft_p50_ms"] <= run["ttft_p99_ms"] and run["tpot_p50_ms"] > 0
        assert run["output_tokens_per_s"] > 0
    assert Path(shared["chart"]).is_file() and bench["charts"][SHARED_PREFIX_CAPTION] == shared["chart"]
    assert bench["artifacts"]["shared_prefix_results"] == str(workdir / "bench" / "shared_prefix.json")

    page = (workdir / "report.html").read_text()
    assert "<h2>Routing: shared prefixes</h2>" in page
    assert page.count("<tr><td>kv</td><td>16 of 16</td>") == 1
    assert page.count("<tr><td>round-robin</td><td>16 of 16</td>") == 1
    assert page.count("<tr><td>kv</td><td>w") == 2 and page.count("<tr><td>round-robin</td><td>w") == 2
    assert SHARED_PREFIX_CAPTION in page
    assert "shared prefix, kv" in result.stdout and "shared prefix, round-robin" in result.stdout


def test_quick_line_turns_the_flywheel_once(quick_run) -> None:
    workdir, result = quick_run
    assert result.returncode == 0, result.stderr[-3000:]
    config = FactoryConfig.quick().flywheel
    flywheel = json.loads((workdir / "factory.json").read_text())["stages"]["flywheel"]["summary"]
    assert flywheel["traffic"] == {
        "requests": config.questions,
        "errors": 0,
        "results": str(workdir / "flywheel" / "traffic"),
    }
    assert flywheel["collected"] == config.questions  # exactly the docs-QA traffic: not the sweep, not the judging
    assert flywheel["corrected"] == round(config.questions * config.correction_share)
    assert flywheel["labels"]["correction"] == flywheel["corrected"]
    assert flywheel["outcome"] in ("promoted", "refused")
    actions = [(entry["action"], entry["alias"]) for entry in flywheel["log"]]
    assert actions[:4] == [("register", None), ("promote", "champion"), ("register", None), ("promote", "challenger")]
    # The champion measured again, as clients reach it now, scores as it was judged: the swap took.
    judged = flywheel["candidate"] if flywheel["outcome"] == "promoted" else flywheel["champion"]
    assert flywheel["measured_again"]["hard_eval_loss"] == pytest.approx(judged["hard_eval_loss"], rel=1e-9)
    if flywheel["outcome"] == "promoted":
        assert actions[4:] == [("promote", "champion")] and flywheel["measured_again"]["model"] == config.served_name
    else:
        assert actions[4:] == [("refuse", None)] and flywheel["measured_again"]["model"] == "factory-model"
        assert flywheel["log"][-1]["reason"].startswith("iteration 1: refused by ")
    page = (workdir / "report.html").read_text()
    assert f"Flywheel: one iteration ({flywheel['outcome']})" in page and "hard-eval loss" in page
    assert (workdir / "flywheel" / "iteration-001" / "report.md").is_file()


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


def test_rerun_resumes_and_from_reruns_only_the_named_stages(quick_run, quick_config, run_factory) -> None:
    workdir, first = quick_run
    assert first.returncode == 0, first.stderr[-3000:]
    settings = ["--quick", "--config", str(quick_config), "--workdir", str(workdir)]  # the first run's
    again = run_factory(*settings, timeout=120)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("done earlier, kept") == len(STAGES)

    before = (workdir / "report.html").stat().st_mtime_ns
    report_only = run_factory(*settings, "--from", "report", timeout=120)
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


@pytest.fixture()
def trained_copy(quick_run, tmp_path: Path) -> Path:
    """A copy of the quick line's work directory: its ingest and train stages hold for other settings."""
    workdir, result = quick_run
    assert result.returncode == 0, result.stderr[-3000:]
    copy = tmp_path / "factory"
    shutil.copytree(workdir, copy)
    return copy


def test_one_worker_is_a_plain_server_and_nothing_is_compared(trained_copy: Path, quick_config, run_factory) -> None:
    config = trained_copy.parent / "factory.toml"
    config.write_text(quick_config.read_text(encoding="utf-8") +  # the quick line's [train]: kept, not rerun
                      "[serve]\nworkers = 1\n[bench]\nconcurrency = [1]\nrequests_per_point = 4\n"
                      "[flywheel]\nenabled = false\n[plan]\nenabled = false\n", encoding="utf-8")  # fmt: skip
    result = run_factory("--quick", "--config", str(config), "--workdir", str(trained_copy), timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("done earlier, kept") == 2  # ingest and train
    stages = json.loads((trained_copy / "factory.json").read_text())["stages"]
    serve, bench = stages["serve"]["summary"], stages["bench"]["summary"]
    assert (serve["workers"], serve["router_policy"], serve["fleet"]) == (1, None, [])
    assert "sweep_fleet" not in bench
    assert bench["shared_prefix"]["policies"] == {} and "one worker" in bench["shared_prefix"]["skipped"]
    assert not (trained_copy / "bench" / "shared_prefix.json").exists()
    assert "workers x" not in (trained_copy / "serve" / "server.log").read_text()  # no fleet started
    assert "not compared: one worker" in (trained_copy / "report.html").read_text()
    assert stages["flywheel"]["summary"]["skipped"] == "[flywheel] enabled = false"


def test_keep_serving_gets_the_fleet_back_after_the_comparison(trained_copy: Path, quick_config) -> None:
    config = FactoryConfig.load(quick_config, quick=True, workdir=trained_copy)  # the quick line's settings
    config.bench.concurrency, config.bench.requests_per_point = [1], 4
    config.bench.num_prefixes = config.bench.questions_per_prefix = 2
    config.bench.shared_prefix_policies = ["round-robin"]  # one fleet of its own stops the sweep's as two do
    config.flywheel.enabled = config.plan.enabled = False
    seen = []

    def keep_serving(url: str) -> None:
        with urllib.request.urlopen(f"{url}/workers", timeout=10) as response:
            seen.append((url, json.loads(response.read())))

    run = pipeline.run_factory(config, console=Console(file=io.StringIO()), keep_serving=keep_serving)
    assert run.ran == [
        "bench",
        "flywheel",
        "plan",
        "report",
    ]  # the serve stage's settings hold; its fleet starts for bench
    [(url, fleet)] = seen
    swept = json.loads((trained_copy / "bench" / "run.json").read_text())["endpoint"]["url"]
    assert url == swept  # the sweep's fleet (kv, not the comparison's round-robin), started again on its port
    assert fleet["policy"] == "kv" and [worker["served"] for worker in fleet["workers"]] == [0, 0]
    policies = run.summaries["bench"]["shared_prefix"]["policies"]
    assert {policy: compared["completed"] for policy, compared in policies.items()} == {"round-robin": 4}
