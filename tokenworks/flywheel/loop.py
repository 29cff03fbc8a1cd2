"""One turn of the flywheel: collect, flag, build, train, register, evaluate, gate, promote or refuse.

    collect   the log's requests since the last iteration (by commit order; state.json keeps the mark)
    flag      the flag rules over every request not yet looked at (flagging.py)
    build     flagged requests with a label (labels.py) -> SFT data, the frozen hard-eval set (dataset.py)
    train     a LoRA candidate from the current champion (candidate.py)
    register  the candidate with its lineage: parent, dataset manifest, training run; alias challenger
    evaluate  champion and candidate alike: hard-eval loss and exact match through the serving endpoint
              (the candidate loaded there under a temporary name), general loss on the pretraining
              validation split
    gate      gate.decide under the config's margin and tolerance
    promote   the registry's champion alias, then the hot swap behind the served name; or refuse,
              logged with the rules that failed

Every iteration writes WORKDIR/iteration-NNN/ (dataset/, train/, report.json, report.md). An
iteration with no labelled request stops after build and says so, and moves the mark; one that
fails on the way (a server down, a training error) leaves the mark, so the next takes its requests.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from tokenworks.errors import TokenworksError
from tokenworks.flywheel import promotion, store
from tokenworks.flywheel.candidate import base_of, train_candidate
from tokenworks.flywheel.dataset import VALIDATION_NAME, build_dataset, read_hard_eval
from tokenworks.flywheel.evaluate import ServedModel, evaluate_served, validation_loss
from tokenworks.flywheel.flagging import flag_requests
from tokenworks.flywheel.gate import Evaluation, decide, relative_change
from tokenworks.flywheel.labels import label_requests, read_references, shuffled
from tokenworks.flywheel.loop_config import FlywheelConfig
from tokenworks.flywheel.loop_report import write_report
from tokenworks.flywheel.registry import CHALLENGER, CHAMPION, ModelVersion, Registry
from tokenworks.flywheel.swap import base_model_name, load_adapter, unload_adapter
from tokenworks.flywheel.teacher import Teacher

STAGES = ("collect", "flag", "build", "train", "register", "evaluate", "gate", "promote")
STATE_NAME = "state.json"


class FlywheelError(TokenworksError):
    """An iteration cannot run as configured: no base model, no general set, nothing to judge with."""


class Progress(Protocol):
    def start(self, stage: str, detail: str = "") -> None: ...
    def finish(self, stage: str, detail: str) -> None: ...
    def train_event(self, record: dict[str, Any]) -> None: ...


class QuietProgress:
    def start(self, stage: str, detail: str = "") -> None:
        pass

    def finish(self, stage: str, detail: str) -> None:
        pass

    def train_event(self, record: dict[str, Any]) -> None:
        pass


@dataclass(slots=True)
class IterationResult:
    iteration: int
    directory: Path
    outcome: str  # promoted, refused, or nothing-to-train
    figures: dict[str, Any] = field(default_factory=dict)  # what report.json holds
    report_json: Path | None = None
    report_md: Path | None = None


def read_state(workdir: Path) -> dict[str, int]:
    path = Path(workdir) / STATE_NAME
    if not path.is_file():
        return {"iterations": 0, "collected_upto": 0}
    return json.loads(path.read_text(encoding="utf-8"))


def write_state(workdir: Path, state: dict[str, int]) -> None:
    """Set the mark: the next iteration collects the requests logged after row `collected_upto`."""
    Path(workdir).mkdir(parents=True, exist_ok=True)
    (Path(workdir) / STATE_NAME).write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")


def run_iteration(config: FlywheelConfig, progress: Progress | None = None) -> IterationResult:
    progress = progress or QuietProgress()
    state = read_state(config.workdir)
    number = state["iterations"] + 1
    directory = _fresh_directory(config.workdir, number)
    figures: dict[str, Any] = {"iteration": number, "started": time.time(), "seconds": {}}
    timer = _StageTimer(progress, figures["seconds"])
    teacher = _teacher(config)

    with timer("collect"):
        connection = store.connect_existing(config.log_db)
        upto = store.last_row(connection)
        figures["collected"] = store.count_traffic(connection, state["collected_upto"], upto)
        connection.close()
        timer.detail = f"{figures['collected']} requests logged since the last iteration"
    with timer("flag"):
        flag_requests(config.log_db, config.flags, teacher)
        connection = store.connect_existing(config.log_db)
        rows = store.flagged_requests(connection, state["collected_upto"], upto)
        connection.close()
        figures["flagged"] = len(rows)
        figures["flag_rules"] = _rule_counts(rows)
        timer.detail = f"{len(rows)} flagged: " + ", ".join(f"{r} {n}" for r, n in figures["flag_rules"].items())
    with timer("build"):
        labelled = label_requests(rows, read_references(config.labels.references), teacher)
        records = shuffled(labelled.records, config.labels.seed) if config.labels.shuffle else labelled.records
        figures["labels"] = {**dict(labelled.sources), "unlabelled": labelled.unlabelled,
                             "not_plain_text": labelled.no_prompt, "shuffled": config.labels.shuffle}  # fmt: skip
        timer.detail = "no flagged request has a label: nothing to train on"
        if records:
            built = build_dataset(
                records, directory / "dataset", config.hard_eval,
                validation_fraction=config.dataset.validation_fraction,
                hard_eval_fraction=config.dataset.hard_eval_fraction,
            )  # fmt: skip
            figures["dataset"] = {"train": built.train, "validation": built.validation, "hard_eval": built.hard_eval,
                                  "duplicates": built.duplicates, "held_for_eval": built.held_for_eval,
                                  "manifest": str(built.manifest)}  # fmt: skip
            timer.detail = f"{built.train} train, {built.validation} validation, {built.hard_eval} hard-eval items"
    if not records:
        write_state(config.workdir, {"iterations": number, "collected_upto": upto})
        return _finish(config, directory, figures, "nothing-to-train")

    registry = Registry(config.registry)
    champion = _champion(registry, config)
    with timer("train", f"from version {champion.version} ({champion.name})"):
        validation = directory / "dataset" / VALIDATION_NAME
        candidate = train_candidate(
            champion, directory / "dataset" / "train.jsonl", validation if built.validation else None,
            directory / "train", config.train, progress.train_event, pretraining=config.evaluate.data,
        )  # fmt: skip
        figures["training"] = {"steps": candidate.steps, "seconds": candidate.seconds,
                               "final_loss": candidate.final_loss, "run": str(candidate.run)}  # fmt: skip
        timer.detail = f"{candidate.steps} steps in {candidate.seconds:.0f} s, loss {candidate.final_loss or 0:.3f}"
    with timer("register"):
        version = registry.register(
            candidate.adapter, name=f"flywheel-{number:03d}", base=candidate.base, parent=champion.version,
            dataset_manifest=built.manifest, training_run=candidate.run, reason=f"iteration {number}'s candidate",
        )  # fmt: skip
        registry.promote(version.version, CHALLENGER, reason=f"iteration {number}'s candidate, to be judged")
        figures["champion_version"], figures["candidate_version"] = champion.version, version.version
        timer.detail = f"version {version.version}, parent {champion.version}"
    with timer("evaluate"):
        champion_eval, candidate_eval = _evaluate(config, champion, version, timer)
        figures["champion"], figures["candidate"] = champion_eval.as_dict(), candidate_eval.as_dict()
        figures["relative"] = {
            "hard_eval_loss": relative_change(champion_eval.hard_eval_loss, candidate_eval.hard_eval_loss),
            "general_loss": relative_change(champion_eval.general_loss, candidate_eval.general_loss),
        }
    with timer("gate"):
        decision = decide(candidate_eval, champion_eval, config.gate)
        figures["decision"] = decision.as_dict()
        timer.detail = "promote" if decision.promote else f"refuse ({', '.join(decision.failed)})"
    evaluation = {"champion": champion_eval.as_dict(), "candidate": candidate_eval.as_dict(),
                  "decision": decision.as_dict(), "gate": _gate_dict(config)}  # fmt: skip
    with timer("promote"):
        if decision.promote:
            endpoint = promotion.Endpoint(config.serve.url, config.serve.served_name, config.serve.api_key or None)
            promotion.promote(
                registry, version.version, CHAMPION, endpoint=endpoint, evaluation=evaluation,
                reason=f"iteration {number}: " + "; ".join(decision.reasons),
            )  # fmt: skip
            timer.detail = f"version {version.version} is champion, served as {config.serve.served_name!r}"
        else:
            registry.refuse(
                version.version, evaluation=evaluation,
                reason=f"iteration {number}: refused by {', '.join(decision.failed)}: " + "; ".join(decision.reasons),
            )  # fmt: skip
            timer.detail = f"refused by {', '.join(decision.failed)}; champion stays version {champion.version}"
    figures["log"] = [_entry_dict(e) for e in registry.history() if e.time >= figures["started"]]
    # Only now are these requests spent: an iteration that failed on the way leaves them to the next.
    write_state(config.workdir, {"iterations": number, "collected_upto": upto})
    return _finish(config, directory, figures, "promoted" if decision.promote else "refused")


def _fresh_directory(workdir: Path, number: int) -> Path:
    """WORKDIR/iteration-NNN, or -attempt-K after it when an earlier attempt failed there (its files
    stay: the registry may name its candidate)."""
    directory, attempt = workdir / f"iteration-{number:03d}", 1
    while directory.exists():
        attempt += 1
        directory = workdir / f"iteration-{number:03d}-attempt-{attempt}"
    directory.mkdir(parents=True)
    return directory


def _teacher(config: FlywheelConfig) -> Teacher | None:
    labels = config.labels
    return Teacher(labels.teacher, labels.teacher_model or None) if labels.teacher else None


def _champion(registry: Registry, config: FlywheelConfig) -> ModelVersion:
    """The registry's champion; on a first run, the served base checkpoint registered and promoted."""
    if registry.alias(CHAMPION) is not None:
        return registry.resolve(CHAMPION)
    if config.train.base is None:
        raise FlywheelError(
            f"{config.registry} has no champion yet: give the served base checkpoint ([train] base, or --base)"
        )
    version = registry.register(config.train.base, reason="the served base model, the flywheel's first champion")
    registry.promote(version.version, CHAMPION, reason="the served base model, the flywheel's first champion")
    return version


def _evaluate(
    config: FlywheelConfig, champion: ModelVersion, candidate: ModelVersion, timer: _StageTimer
) -> tuple[Evaluation, Evaluation]:
    if config.evaluate.data is None:
        raise FlywheelError("give the ingest output whose validation split is the general set ([evaluate] data)")
    items = read_hard_eval(config.hard_eval)
    url, key = config.serve.url, config.serve.api_key or None
    if champion.kind == "lora":  # served already; loaded again so a restarted endpoint serves it too
        load_adapter(url, config.serve.served_name, champion.path, key)
        champion_name = config.serve.served_name
    else:
        champion_name = base_model_name(url, key)
    load_adapter(url, config.serve.challenger, candidate.path, key)
    try:
        served = {}
        for role, name in (("champion", champion_name), ("candidate", config.serve.challenger)):
            timer.note(f"{role}: hard-eval through {name!r} ({len(items)} items)")
            judge = ServedModel(config.serve.evaluate_url or url, name, key)
            served[role] = evaluate_served(judge, items, answer_slack=config.evaluate.answer_slack)
    finally:
        unload_adapter(url, config.serve.challenger, key)
    general = {}
    base = base_of(champion)
    for role, version in (("champion", champion), ("candidate", candidate)):
        timer.note(f"{role}: general loss")
        general[role] = validation_loss(
            base, config.evaluate.data, Path(version.path) if version.kind == "lora" else None,
            context=config.evaluate.general_context, max_tokens=config.evaluate.general_tokens,
        )  # fmt: skip
    timer.detail = (f"hard-eval {served['champion'].loss:.4f} -> {served['candidate'].loss:.4f}, "
                    f"general {general['champion']:.4f} -> {general['candidate']:.4f}")  # fmt: skip
    return tuple(Evaluation(served[r].loss, general[r], served[r].exact_match) for r in ("champion", "candidate"))


def _finish(config: FlywheelConfig, directory: Path, figures: dict[str, Any], outcome: str) -> IterationResult:
    figures["outcome"] = outcome
    figures["finished"] = time.time()
    figures["config"] = {"served_name": config.serve.served_name, "url": config.serve.url, **_gate_dict(config)}
    report_json, report_md = write_report(directory, figures)
    return IterationResult(figures["iteration"], directory, outcome, figures, report_json, report_md)


def _gate_dict(config: FlywheelConfig) -> dict[str, Any]:
    gate = config.gate
    return {"margin": gate.margin, "tolerance": gate.tolerance, "require_exact_match": gate.require_exact_match}


def _rule_counts(rows: list[dict]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for row in rows:
        for rule in json.loads(row["rules"]):
            counts[rule] = counts.get(rule, 0) + 1
    return dict(sorted(counts.items()))


def _entry_dict(entry: Any) -> dict[str, Any]:
    return {"id": entry.id, "time": entry.time, "actor": entry.actor, "action": entry.action, "alias": entry.alias,
            "from_version": entry.from_version, "to_version": entry.to_version, "reason": entry.reason}  # fmt: skip


class _StageTimer:
    """`with timer(stage):` tells the progress display a stage began and ended, and times it."""

    def __init__(self, progress: Progress, seconds: dict[str, float]) -> None:
        self.progress, self.seconds, self.detail = progress, seconds, ""
        self._stage, self._detail = "", ""

    def __call__(self, stage: str, detail: str = "") -> _StageTimer:
        self._stage, self._detail = stage, detail
        return self

    def note(self, detail: str) -> None:
        self.progress.start(self._stage, detail)

    def __enter__(self) -> _StageTimer:
        self.detail, self._began = "", time.perf_counter()
        self.progress.start(self._stage, self._detail)
        return self

    def __exit__(self, kind: object, *rest: object) -> None:
        elapsed = time.perf_counter() - self._began
        self.seconds[self._stage] = round(elapsed, 3)
        if kind is None:
            self.progress.finish(self._stage, self.detail)


def watch(
    config: FlywheelConfig, progress: Progress | None = None, on_result: Callable[[IterationResult], None] | None = None,
    should_stop: Callable[[], bool] = lambda: False, max_iterations: int | None = None,
) -> list[IterationResult]:  # fmt: skip
    """An iteration each time `watch.min_flagged` flagged requests have arrived since the last one,
    polling the log every `watch.poll_s`; until `should_stop()` or `max_iterations`."""
    results: list[IterationResult] = []
    while not should_stop() and (max_iterations is None or len(results) < max_iterations):
        flag_requests(config.log_db, config.flags, _teacher(config))
        connection = store.connect_existing(config.log_db)
        waiting = store.count_flagged(connection, read_state(config.workdir)["collected_upto"])
        connection.close()
        if waiting >= config.watch.min_flagged:
            results.append(run_iteration(config, progress))
            if on_result is not None:
                on_result(results[-1])
        else:
            time.sleep(config.watch.poll_s)
    return results
