"""The flywheel's loop end to end on a tiny model: docs-QA traffic through `tokenworks bench` to a
real server with --log-db, corrections through /v1/feedback, one iteration that trains a LoRA
candidate, judges it through the server and promotes it (hot swap behind the served name); then a
second iteration on shuffled corrections, which the gate refuses and the log says why."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from tokenworks.data import python_docs
from tokenworks.errors import ConfigError
from tokenworks.flywheel import loop, store
from tokenworks.flywheel.candidate import train_candidate
from tokenworks.flywheel.corrections import send_corrections
from tokenworks.flywheel.dataset import read_hard_eval, write_jsonl
from tokenworks.flywheel.docs_qa import docs_qa_items, write_docs_qa
from tokenworks.flywheel.evaluate import ServedModel, evaluate_served
from tokenworks.flywheel.gate import HARD_EVAL_MARGIN
from tokenworks.flywheel.loop import FlywheelError, run_iteration
from tokenworks.flywheel.loop_config import (
    DatasetSettings,
    EvaluateSettings,
    FlywheelConfig,
    LabelSettings,
    ServeSettings,
    TrainSettings,
    WatchSettings,
)  # fmt: skip
from tokenworks.flywheel.registry import CHAMPION, Registry
from tokenworks.flywheel.swap import served_models
from tokenworks.model import CausalLM, Tokenizer, preset_config, save_model

from ..serve.conftest import MODEL_NAME, start_server

TRAFFIC = 48  # requests per bench run
LOG_FLUSH_S = 1.0  # the test server's request log commits at most this long after a request (its default)
HARD_EVAL_ITEMS = 16
SHARE = 0.5  # of the answers a user corrects


@pytest.fixture(scope="module")
def setup(tmp_path_factory, shards_dir):
    root = tmp_path_factory.mktemp("flywheel-loop")
    (root / "data").symlink_to(shards_dir)  # the session's ingest, read only
    tokenizer = Tokenizer.load(root / "data" / "tokenizer")
    config = preset_config("nano", tokenizer.vocab_size, eos_token_id=tokenizer.eos_token_id)
    save_model(CausalLM(config).init_weights(seed=0, std=0.1), root / "base")
    tokenizer.save(root / "base")
    items = docs_qa_items(itertools.islice(python_docs(include_modules=False), 80))
    files = write_docs_qa(items, root / "docs-qa", max_tokens=12)
    write_jsonl(root / "hard_eval.jsonl", (json.loads(line) for line in
                files.held_out.read_text().splitlines()[:HARD_EVAL_ITEMS]))  # fmt: skip
    server = start_server(root / "base", log_db=root / "requests.db", log_flush_interval=0.2)
    yield root, files, server
    server.stop()


def bench(url: str, workload: Path, out: Path, seed: int) -> dict:
    command = [sys.executable, "-m", "tokenworks", "bench", "run", "--url", url, "--model", MODEL_NAME,
               "--api", "chat", "--workload", "jsonl", "--input-file", str(workload), "--concurrency", "8",
               "--num-requests", str(TRAFFIC), "--warmup-requests", "0", "--temperature", "0",
               "--free-output-length", "--seed", str(seed), "--out", str(out)]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True, timeout=120)
    return json.loads((out / "run.json").read_text())


def settled_last_row(db: Path) -> int:
    """The log's last row once no commit is on its way: the server's writer commits up to
    LOG_FLUSH_S after a request (the judging of the iteration just run, among others), so the
    last row is read until it stays the same for longer than that."""
    connection = store.connect_existing(db)
    try:
        last = store.last_row(connection)
        while True:
            time.sleep(LOG_FLUSH_S + 0.5)
            now = store.last_row(connection)
            if now == last:
                return last
            last = now
    finally:
        connection.close()


def flywheel_config(root: Path, files, url: str, **labels) -> FlywheelConfig:
    return FlywheelConfig(
        workdir=root / "flywheel", log_db=root / "requests.db", registry=root / "registry.db",
        serve=ServeSettings(url=url, served_name="docs"),
        labels=LabelSettings(references=(files.train,), **labels),
        dataset=DatasetSettings(hard_eval=root / "hard_eval.jsonl"),
        train=TrainSettings(base=root / "base", max_steps=30, context=128, lr=1e-2,
                             targets=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")),
        evaluate=EvaluateSettings(data=root / "data", general_tokens=8192, general_context=128),
    )  # fmt: skip


@pytest.fixture(scope="module")
def first(setup):
    root, files, server = setup
    bench(server.url, files.workload, root / "bench-1", seed=0)
    corrected = send_corrections(server.url, root / "requests.db", [files.train], SHARE, seed=0)
    return run_iteration(flywheel_config(root, files, server.url)), corrected


def test_one_iteration_promotes_a_better_candidate_and_serves_it(setup, first) -> None:
    root, _, server = setup
    result, corrected = first
    figures = result.figures
    assert figures["collected"] == TRAFFIC
    assert corrected == TRAFFIC // 2
    assert figures["labels"]["correction"] == corrected
    assert figures["labels"]["correction"] + figures["labels"].get("reference", 0) == figures["flagged"]
    assert result.outcome == "promoted", figures["decision"]
    assert figures["relative"]["hard_eval_loss"] <= -0.10  # the bar: 10% better on held-out items
    assert figures["relative"]["general_loss"] <= 0.02  # and at most 2% worse on the general set
    registry = Registry(root / "registry.db")
    assert registry.aliases() == {"champion": 2, "challenger": 2}
    candidate = registry.get(2)
    assert (candidate.kind, candidate.parent, candidate.dataset_manifest) == (
        "lora",
        1,
        str((result.directory / "dataset" / "manifest.json").resolve()),
    )
    assert [e.action for e in registry.history()] == ["register", "promote", "register", "promote", "promote"]
    # The served name now answers with the candidate: the same figures as when judged as the challenger.
    again = evaluate_served(ServedModel(server.url, "docs"), read_hard_eval(root / "hard_eval.jsonl"))
    assert again.loss == pytest.approx(figures["candidate"]["hard_eval_loss"], rel=1e-9)
    assert again.exact_match == figures["candidate"]["exact_match"]
    assert [model["id"] for model in served_models(server.url)] == [MODEL_NAME, "docs"]  # the challenger is gone
    report = result.report_md.read_text()
    assert "| hard-eval loss |" in report and "promoted to champion" in report


def test_a_candidate_trained_on_shuffled_corrections_is_refused(setup, first) -> None:
    root, files, server = setup
    connection = store.connect_existing(root / "requests.db")
    mark = store.last_row(connection)
    connection.close()
    bench(server.url, files.workload, root / "bench-2", seed=1)
    send_corrections(server.url, root / "requests.db", [files.train], SHARE, seed=1, after_row=mark)
    config = flywheel_config(root, files, server.url, shuffle=True)
    result = run_iteration(config)
    assert result.figures["collected"] == TRAFFIC  # the first iteration's judging is not traffic
    assert result.figures["labels"]["shuffled"] is True
    assert result.outcome == "refused"
    registry = Registry(root / "registry.db")
    assert registry.alias(CHAMPION) == 2  # nothing promoted
    last = registry.history()[-1]
    assert (last.action, last.to_version, last.from_version) == ("refuse", 3, 2)
    assert last.reason.startswith(f"iteration 2: refused by {HARD_EVAL_MARGIN}: hard-eval loss")
    assert result.figures["decision"]["failed"] == [HARD_EVAL_MARGIN]


def test_watch_runs_an_iteration_once_enough_flagged_requests_arrived(setup, first, tmp_path) -> None:
    root, files, server = setup
    config = flywheel_config(root, files, server.url)
    # A workdir and registry of its own, a short training: a real iteration, in a few seconds.
    config = replace(
        config, workdir=tmp_path / "wheel", registry=tmp_path / "r.db", serve=replace(config.serve, served_name="watched"),
        train=replace(config.train, max_steps=3), watch=WatchSettings(min_flagged=TRAFFIC, poll_s=0.01),
    )  # fmt: skip
    logged = settled_last_row(root / "requests.db")  # every request before this test, committed
    connection = store.connect_existing(root / "requests.db")
    traffic = store.count_traffic(connection, 0, logged)
    connection.close()
    loop.write_state(config.workdir, {"iterations": 0, "collected_upto": logged})
    polls = iter(range(3))
    # Everything logged has been collected: three polls, no iteration.
    assert loop.watch(config, should_stop=lambda: next(polls, None) is None) == []
    assert loop.read_state(config.workdir) == {"iterations": 0, "collected_upto": logged}
    loop.write_state(config.workdir, {"iterations": 0, "collected_upto": 0})  # as if nothing had been collected
    [result] = loop.watch(config, max_iterations=1)
    assert (result.figures["iteration"], result.figures["collected"], result.figures["training"]["steps"]) == (
        1, traffic, 3,
    )  # fmt: skip
    assert result.outcome in ("promoted", "refused")  # judged by the gate either way, with its reasons
    assert Registry(tmp_path / "r.db").history()[-1].action == ("promote" if result.outcome == "promoted" else "refuse")
    assert loop.read_state(config.workdir) == {"iterations": 1, "collected_upto": logged}


def test_a_candidate_trained_for_a_time_budget_stops_on_it(setup, first, tmp_path) -> None:
    """max_steps 0: as many steps as time_budget_s allows (the factory's setting: a step's time
    depends on the host), the learning-rate schedule sized to end on it."""
    root, files, server = setup
    dataset = root / "flywheel" / "iteration-001" / "dataset"
    settings = replace(flywheel_config(root, files, server.url).train, max_steps=0, time_budget_s=2.0)
    champion = Registry(root / "registry.db").get(1)  # the base model, the first champion
    candidate = train_candidate(champion, dataset / "train.jsonl", None, tmp_path / "run", settings,
                                pretraining=root / "data")  # fmt: skip
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["stopped_by"] == "time_budget" and candidate.steps == record["steps"] >= 1
    assert candidate.seconds <= 2.0


@pytest.mark.parametrize(("max_steps", "budget"), [(0, 0.0), (-1, 5.0), (10, -1.0)])
def test_a_candidate_needs_a_step_limit_or_a_time_budget(max_steps, budget) -> None:
    with pytest.raises(ConfigError, match="max_steps"):
        TrainSettings(max_steps=max_steps, time_budget_s=budget)


def test_an_iteration_that_fails_on_the_way_leaves_its_requests_to_the_next(setup, first, tmp_path) -> None:
    root, files, server = setup
    config = replace(flywheel_config(root, files, server.url), workdir=tmp_path / "wheel", registry=tmp_path / "r.db")
    config = replace(config, train=replace(config.train, base=None))  # a fresh registry and no base: no champion
    for attempt in ("iteration-001", "iteration-001-attempt-2"):
        with pytest.raises(FlywheelError, match="has no champion yet"):
            run_iteration(config)
        assert (tmp_path / "wheel" / attempt / "dataset" / "train.jsonl").is_file()
        assert loop.read_state(config.workdir) == {"iterations": 0, "collected_upto": 0}
