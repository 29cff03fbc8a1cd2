"""The factory's flywheel stage: served traffic makes the factory's model better, or is refused.

On the fleet the serve stage started (its request log on, `[serve] log_requests`):
1. the docs-QA workload from the default corpus (flywheel/docs_qa.py): `questions` train-side
   items as a JSONL workload, `hard_eval_items` held-out items as the frozen hard-eval set;
2. that workload through `bench` (the sweep's own machinery, one point, greedy, chat API);
3. a `correction_share` of the answers corrected with their reference through /v1/feedback;
4. one flywheel iteration (flywheel/loop.py) over exactly that traffic: flag, build, train a
   LoRA candidate, evaluate both models through the fleet, gate, promote (hot swap behind
   `served_name` on every worker) or refuse;
5. the champion measured again through the fleet, under the name clients now use.
"""

from __future__ import annotations

import asyncio
import random
import shutil
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from tokenworks.factory.config import FactoryConfig
from tokenworks.factory.server import ServerProcess


def run_flywheel_stage(
    config: FactoryConfig, checkpoint: Path, served_model: str, server: ServerProcess, console: Console
) -> dict[str, Any]:
    from tokenworks.data import python_docs
    from tokenworks.flywheel import store
    from tokenworks.flywheel.corrections import send_corrections
    from tokenworks.flywheel.dataset import read_hard_eval
    from tokenworks.flywheel.docs_qa import docs_qa_items, write_docs_qa
    from tokenworks.flywheel.evaluate import ServedModel, evaluate_served
    from tokenworks.flywheel.gate import GateConfig
    from tokenworks.flywheel.loop import run_iteration, write_state
    from tokenworks.flywheel.loop_config import (
        DatasetSettings,
        EvaluateSettings,
        FlywheelConfig,
        LabelSettings,
        ServeSettings,
        TrainSettings,
    )  # fmt: skip
    from tokenworks.flywheel.loop_report import before_after_rows
    from tokenworks.flywheel.run_view import RunView

    settings, workdir = config.flywheel, config.workdir
    if not settings.enabled:
        return {"skipped": "[flywheel] enabled = false"}
    if config.data.sources:
        return {"skipped": "the docs-QA workload is made from the default corpus; [data] sources replaced it"}
    if not config.serve.log_requests:
        return {"skipped": "the server keeps no request log ([serve] log_requests = false)"}
    out = workdir / "flywheel"
    shutil.rmtree(out, ignore_errors=True)  # a re-run starts a fresh registry and iteration

    items = docs_qa_items(python_docs())
    rng = random.Random(settings.seed)
    train_side = [i for i in items if i.split == "train"]
    train = rng.sample(train_side, min(settings.questions, len(train_side)))
    held_out = rng.sample([i for i in items if i.split == "held_out"], settings.hard_eval_items)
    files = write_docs_qa(train + held_out, out / "docs-qa", max_tokens=settings.max_tokens)

    log_db = workdir / "serve" / "requests.db"
    connection = store.connect_existing(log_db)
    mark = store.last_row(connection)  # the bench stage's sweep is in the log too: not this stage's traffic
    connection.close()
    write_state(out, {"iterations": 0, "collected_upto": mark})
    console.print(f"docs-QA traffic: {len(train)} questions at concurrency {settings.concurrency}")
    traffic = _send_traffic(config, files.workload, len(train), checkpoint, served_model, server.url, out / "traffic")
    _wait_for_rows(log_db, mark, len(train))
    corrected = send_corrections(
        server.url, log_db, [files.train], settings.correction_share, settings.seed,
        after_row=mark,
    )  # fmt: skip
    console.print(f"{corrected} answers corrected through /v1/feedback")

    flywheel = FlywheelConfig(
        workdir=out, log_db=log_db, registry=out / "registry.db",
        serve=ServeSettings(url=server.url, served_name=settings.served_name),
        labels=LabelSettings(references=(files.train,)),
        dataset=DatasetSettings(hard_eval=files.held_out),
        train=TrainSettings(
            base=checkpoint, max_steps=settings.train_steps or 0, time_budget_s=settings.train_seconds,
            context=config.train.context, lr=settings.lr,
            rank=settings.lora_rank, alpha=2.0 * settings.lora_rank, targets=tuple(settings.lora_targets),
            replay_fraction=settings.replay_fraction, seed=settings.seed,
        ),
        evaluate=EvaluateSettings(
            data=workdir / "data", general_tokens=settings.general_tokens, general_context=config.train.context
        ),
        gate=GateConfig(margin=settings.margin, tolerance=settings.tolerance),
    )  # fmt: skip
    with RunView(console) as view:
        result = run_iteration(flywheel, view)
    figures = result.figures

    # The champion measured again, as clients reach it now: the served name after a promotion.
    name = settings.served_name if result.outcome == "promoted" else served_model
    again = evaluate_served(ServedModel(server.url, name), read_hard_eval(files.held_out))
    return {
        "outcome": result.outcome,
        "traffic": traffic,
        "corrected": corrected,
        "collected": figures["collected"],
        "flagged": figures["flagged"],
        "labels": figures.get("labels", {}),
        "dataset": figures.get("dataset"),
        "training": figures.get("training"),
        "champion": figures.get("champion"),
        "candidate": figures.get("candidate"),
        "relative": figures.get("relative"),
        "decision": figures.get("decision"),
        "gate": {"margin": settings.margin, "tolerance": settings.tolerance},
        "rows": [list(row) for row in before_after_rows(figures)],
        "measured_again": {"model": name, "hard_eval_loss": again.loss, "exact_match": again.exact_match},
        "log": figures.get("log", []),
        "artifacts": {
            "report": str(result.report_md),
            "report_json": str(result.report_json),
            "registry": str(out / "registry.db"),
            "requests": str(log_db),
        },
    }


def _wait_for_rows(log_db: Path, mark: int, count: int, timeout_s: float = 30.0) -> None:
    """Until the log holds `count` rows after `mark`: the servers commit every flush interval, and
    users correct answers they were given, which must be in the log to be found."""
    from tokenworks.flywheel import store

    deadline = time.monotonic() + timeout_s
    while True:
        connection = store.connect_existing(log_db)
        logged = store.count_traffic(connection, mark, store.last_row(connection))
        connection.close()
        if logged >= count or time.monotonic() > deadline:
            return
        time.sleep(0.2)


def _send_traffic(
    config: FactoryConfig, workload: Path, questions: int, checkpoint: Path, model: str, url: str, out: Path
) -> dict[str, Any]:
    """The docs-QA questions through bench's own machinery: one closed-loop point, greedy, as chat."""
    from tokenworks.bench.loadgen import LoadOptions
    from tokenworks.bench.report import write_results
    from tokenworks.bench.runner import Accounting, Target
    from tokenworks.bench.sweep import SweepPlan, run_sweep
    from tokenworks.bench.workloads import WorkloadOptions

    settings = config.flywheel
    # enforce_output_length off: an answer ends where the model ends it, as a user's would.
    target = Target(url=url, model=model, tokenizer=checkpoint, enforce_output_length=False)
    workload_options = WorkloadOptions(kind="jsonl", api="chat", input_file=workload, temperature=0.0)
    load = LoadOptions(concurrency=settings.concurrency, num_requests=questions, warmup_requests=0,
                       seed=settings.seed)  # fmt: skip
    plan = SweepPlan(
        concurrencies=[settings.concurrency], io_pairs=[(str(workload_options.input_tokens), str(workload_options.output_tokens))],
        requests_per_point=questions, stop_when_saturated=False,
    )  # fmt: skip
    accounting = Accounting(hardware=config.bench.hardware, price_book=config.bench.price_book)
    result = asyncio.run(run_sweep(target, workload_options, load, plan, None, accounting, Console(quiet=True)))
    files = write_results(out, result, workload_options, load, None, accounting,
                          command="tokenworks factory (flywheel stage)")  # fmt: skip
    point = files.summary()["points"][0]
    return {"requests": questions, "errors": point["errors"], "results": str(out)}
