"""What `tokenworks flywheel run` is asked to do: one small TOML file, every key with a default.

    workdir = "flywheel"                  # iterations, the frozen hard-eval set, state.json
    [log]      db = "requests.db"         # the request log `tokenworks serve --log-db` writes
    [registry] path = "tokenworks-registry.db"
    [serve]    url = "http://127.0.0.1:8000", served_name = "champion", challenger = "challenger",
               evaluate_url = ""          # where judging's calls go; empty: url itself
    [labels]   references = ["docs-qa/train.jsonl"], teacher = "", shuffle = false
    [dataset]  hard_eval = "", validation_fraction = 0.1, hard_eval_fraction = 0.2
    [train]    base = "", max_steps = 40, time_budget_s = 0, lr = 2e-3, rank = 8, replay_fraction = 0.25, ...
    [evaluate] data = "", general_tokens = 32768, ...
    [gate]     margin = 0.10, tolerance = 0.02, require_exact_match = false   (gate.GateConfig)
    [flags]    min_mean_logprob = -2.5, ...                                    (flags.FlagConfig)
    [watch]    min_flagged = 32, poll_s = 10.0

An unknown section or key, or a value of another type, is one ConfigError naming the file, the
section and the key. Relative paths are read from the file's directory.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from tokenworks.errors import ConfigError
from tokenworks.flywheel.flags import FlagConfig
from tokenworks.flywheel.gate import GateConfig
from tokenworks.flywheel.registry import DEFAULT_REGISTRY


@dataclass(frozen=True, slots=True)
class ServeSettings:
    url: str = "http://127.0.0.1:8000"  # a `tokenworks serve` or the router in front of a fleet
    served_name: str = "champion"  # the adapter name clients ask for: the champion, hot-swapped
    challenger: str = "challenger"  # the temporary name a candidate is served under while judged
    api_key: str = ""
    # Where judging's /tokenize and scoring calls go, if not to url (a server, or the router, which
    # answers /tokenize by a worker and loads every adapter on all of them): one worker, say.
    evaluate_url: str = ""


@dataclass(frozen=True, slots=True)
class LabelSettings:
    references: tuple[Path, ...] = ()  # JSONL of {prompt, reference}: a workload's reference answers
    teacher: str = ""  # an OpenAI-compatible URL asked for the flagged prompts without another label
    teacher_model: str = ""
    shuffle: bool = False  # deal the labels out to the wrong prompts: a deliberately bad candidate
    seed: int = 0


@dataclass(frozen=True, slots=True)
class DatasetSettings:
    hard_eval: Path | None = None  # the frozen hard-eval set; None: WORKDIR/hard_eval.jsonl, chosen once
    validation_fraction: float = 0.1
    hard_eval_fraction: float = 0.2


@dataclass(frozen=True, slots=True)
class TrainSettings:
    base: Path | None = None  # the served base checkpoint: the first champion, when the registry has none
    max_steps: int = 40  # bounded: a candidate takes a minute or two on 2 cores; 0: as many as time_budget_s allows
    # Seconds of training at most (0: no limit): a step's time depends on the host, and the iteration
    # runs beside a serving fleet. With max_steps 0 the learning-rate schedule is sized to end on it.
    time_budget_s: float = 0.0
    batch_size: int = 8
    context: int = 256
    lr: float = 2e-3
    warmup: int = 4
    rank: int = 8
    alpha: float = 16.0
    targets: tuple[str, ...] = ("q_proj", "v_proj")
    # Rehearsal: this share of every batch is pretraining text ([evaluate] data's train split), which
    # holds the general loss (measured on that data's validation split) while the rest teaches.
    replay_fraction: float = 0.25
    seed: int = 0
    device: str = "cpu"  # beside a serving engine on the same cores, so not whatever `auto` finds

    def __post_init__(self) -> None:
        if not 0 <= self.replay_fraction < 1:  # at least one row of every batch is the traffic's
            raise ConfigError(f"replay_fraction must be in [0, 1), got {self.replay_fraction}")
        if self.max_steps < 0 or self.time_budget_s < 0:
            raise ConfigError(
                f"max_steps and time_budget_s cannot be negative, got {self.max_steps}, {self.time_budget_s}"
            )
        if self.max_steps == 0 and self.time_budget_s == 0:
            raise ConfigError("max_steps = 0 trains for time_budget_s: give one of them")


@dataclass(frozen=True, slots=True)
class EvaluateSettings:
    data: Path | None = None  # the ingest output whose validation split is the general set
    general_tokens: int = 32768
    general_context: int = 256
    answer_slack: int = 8  # greedy tokens past the reference's length for exact match


@dataclass(frozen=True, slots=True)
class WatchSettings:
    min_flagged: int = 32  # an iteration when this many flagged requests arrived since the last
    poll_s: float = 10.0


@dataclass(frozen=True, slots=True)
class FlywheelConfig:
    workdir: Path = Path("flywheel")
    log_db: Path = Path("requests.db")
    registry: Path = DEFAULT_REGISTRY
    serve: ServeSettings = field(default_factory=ServeSettings)
    labels: LabelSettings = field(default_factory=LabelSettings)
    dataset: DatasetSettings = field(default_factory=DatasetSettings)
    train: TrainSettings = field(default_factory=TrainSettings)
    evaluate: EvaluateSettings = field(default_factory=EvaluateSettings)
    gate: GateConfig = field(default_factory=GateConfig)
    flags: FlagConfig = field(default_factory=FlagConfig)
    watch: WatchSettings = field(default_factory=WatchSettings)

    @property
    def hard_eval(self) -> Path:
        return self.dataset.hard_eval or self.workdir / "hard_eval.jsonl"

    @classmethod
    def load(cls, path: Path) -> FlywheelConfig:
        try:
            document = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
            raise ConfigError(f"cannot read the flywheel config {path}: {error}") from None
        return from_document(document, Path(path).parent, str(path))


# The sections of the file: [log] db and [registry] path are single keys of the top-level config.
_SECTIONS = {"serve": ServeSettings, "labels": LabelSettings, "dataset": DatasetSettings, "train": TrainSettings,
             "evaluate": EvaluateSettings, "gate": GateConfig, "flags": FlagConfig, "watch": WatchSettings}  # fmt: skip
_SINGLE = {"log": ("db", "log_db"), "registry": ("path", "registry")}


def from_document(document: dict[str, Any], directory: Path, where: str) -> FlywheelConfig:
    config = FlywheelConfig()
    values: dict[str, Any] = {}
    for key, value in document.items():
        if key == "workdir":
            values["workdir"] = directory / _typed(value, str, f"{where}: workdir")
        elif key in _SINGLE:
            inner, target = _SINGLE[key]
            table = _table(value, key, where)
            unknown = sorted(set(table) - {inner})
            if unknown:
                raise ConfigError(f"{where}: [{key}] has unknown key {unknown[0]!r}; known: {inner}")
            if inner in table:
                values[target] = directory / _typed(table[inner], str, f"{where}: [{key}] {inner}")
        elif key in _SECTIONS:
            values[key] = _section(getattr(config, key), _table(value, key, where), directory, f"{where}: [{key}]")
        else:
            known = ", ".join(["workdir", *_SINGLE, *_SECTIONS])
            raise ConfigError(f"{where}: unknown section or key {key!r}; known: {known}")
    return replace(config, **values)


def _table(value: Any, key: str, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: [{key}] must be a table")
    return value


def _section(default: Any, table: dict[str, Any], directory: Path, where: str) -> Any:
    """The defaults with the table's keys, each checked against its default's type."""
    known = {f.name: getattr(default, f.name) for f in fields(default)}
    changes: dict[str, Any] = {}
    for key, value in table.items():
        if key not in known:
            raise ConfigError(f"{where} has unknown key {key!r}; known: {', '.join(known)}")
        current, what = known[key], f"{where} {key}"
        if isinstance(current, tuple):
            items = _typed(value, list, what)
            changes[key] = tuple(directory / _typed(i, str, what) if key == "references" else _typed(i, str, what)
                                 for i in items)  # fmt: skip
        elif isinstance(current, Path) or (current is None and key in ("hard_eval", "base", "data")):
            changes[key] = directory / _typed(value, str, what) if value else None
        elif isinstance(current, bool):
            changes[key] = _typed(value, bool, what)
        elif isinstance(current, float):
            changes[key] = float(_typed(value, (int, float), what))
        else:
            changes[key] = _typed(value, type(current), what)
    try:
        return replace(default, **changes)
    except ConfigError as error:
        raise ConfigError(f"{where}: {error}") from None


def _typed(value: Any, kind: type | tuple[type, ...], where: str) -> Any:
    # bool is an int to Python: never let true stand for a number, nor 1 for a flag.
    if isinstance(value, bool) != (kind is bool) or not isinstance(value, kind):
        name = kind.__name__ if isinstance(kind, type) else "number"
        name = {"str": "a string", "list": "a list", "bool": "a boolean", "int": "an integer"}.get(name, f"a {name}")
        raise ConfigError(f"{where} must be {name}, got {value!r}")
    return value
