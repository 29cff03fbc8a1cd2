"""What `tokenworks factory` is asked to do: one section per stage, read from `factory.toml`.

Every field has a default, so `tokenworks factory` with no arguments runs the whole line on
the embedded corpus; `--quick` shrinks every budget so the line fits in about three minutes.
A TOML file overrides any field; an unknown section or key, or a value of the wrong type, is
an error that names it, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any

from tokenworks.errors import ConfigError, TokenworksError

STAGES = ("ingest", "train", "serve", "bench", "report")


@dataclass(slots=True)
class DataSection:
    sources: list[str] = field(default_factory=list)  # files, directories or globs; empty: Python's own docs
    vocab_size: int = 8192
    max_documents: int | None = None  # None: every document the sources hold
    workers: int = 2


@dataclass(slots=True)
class TrainSection:
    preset: str = "nano"  # the preset with the lowest validation loss in 5 minutes on 2 cores
    time_budget_s: float = 300.0
    context: int = 256
    batch_size: int = 8
    lr: float = 1e-3
    seed: int = 0


@dataclass(slots=True)
class ServeSection:
    threads: int | None = None  # None: the engine's default (every core)
    kv_cache_memory_gib: float = 0.5
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 2048
    port: int = 0  # 0: any free port
    smoke_prompt: str = "The Python language"
    smoke_tokens: int = 32


@dataclass(slots=True)
class BenchSection:
    concurrency: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16, 32])
    input_tokens: str = "128"  # a length distribution, as `tokenworks bench --input-tokens` reads it
    output_tokens: str = "64"
    requests_per_point: int = 64  # at least 2 x the concurrency is used at each point
    warmup_requests: int = 2
    slo: str = "ttft=1s,tpot=100ms"
    price_book: str | None = None  # None: the packaged price book
    hardware: str = "CPU host"  # an entry of the price book
    seed: int = 0


@dataclass(slots=True)
class FactoryConfig:
    workdir: Path = Path("factory")
    data: DataSection = field(default_factory=DataSection)
    train: TrainSection = field(default_factory=TrainSection)
    serve: ServeSection = field(default_factory=ServeSection)
    bench: BenchSection = field(default_factory=BenchSection)

    @classmethod
    def quick(cls, workdir: Path = Path("factory")) -> FactoryConfig:
        """The whole line in about three minutes on 2 cores: less of everything, same stages."""
        return cls(
            workdir=workdir,
            data=DataSection(vocab_size=2048, max_documents=300),
            train=TrainSection(time_budget_s=45.0, context=128),
            serve=ServeSection(kv_cache_memory_gib=0.25, max_num_seqs=16, smoke_tokens=16),
            bench=BenchSection(concurrency=[1, 4, 16], input_tokens="64", output_tokens="32", requests_per_point=16),
        )

    @classmethod
    def load(cls, path: Path, quick: bool = False, workdir: Path | None = None) -> FactoryConfig:
        """The defaults (or the quick ones), overridden by the TOML file's sections."""
        try:
            document = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"no factory configuration at {path}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
            raise ConfigError(f"{path} is not valid TOML: {error}") from None
        base = cls.quick() if quick else cls()
        config = _override(base, document, str(path))
        if workdir is not None:
            config = replace(config, workdir=workdir)
        elif "workdir" in document:  # relative to the file, so the file can travel with its data
            config = replace(config, workdir=(path.parent / config.workdir))
        config.data.sources = [str(path.parent / Path(s).expanduser()) for s in config.data.sources]
        if config.bench.price_book is not None:
            config.bench.price_book = str(path.parent / Path(config.bench.price_book).expanduser())
        config.check()
        return config

    def check(self) -> None:
        if self.train.time_budget_s <= 0:
            raise ConfigError(f"train.time_budget_s must be positive, got {self.train.time_budget_s}")
        if not self.bench.concurrency or min(self.bench.concurrency) < 1:
            raise ConfigError(f"bench.concurrency must list positive numbers, got {self.bench.concurrency}")
        if self.bench.requests_per_point < 1 or self.serve.smoke_tokens < 1:
            raise ConfigError("bench.requests_per_point and serve.smoke_tokens must be at least 1")
        if self.data.max_documents is not None and self.data.max_documents < 1:
            raise ConfigError(f"data.max_documents must be at least 1, got {self.data.max_documents}")
        self._check_names()

    def _check_names(self) -> None:
        """Names and specifications the late stages read, checked now rather than after training."""
        from tokenworks.bench.economics import PriceBook
        from tokenworks.bench.slo import SLO
        from tokenworks.bench.workloads import LengthDistribution
        from tokenworks.model.presets import PRESETS

        if self.train.preset not in PRESETS:
            raise ConfigError(
                f"unknown model preset {self.train.preset!r} in train.preset; choose one of {', '.join(PRESETS)}"
            )
        try:
            SLO.parse(self.bench.slo)
            LengthDistribution.parse(self.bench.input_tokens)
            LengthDistribution.parse(self.bench.output_tokens)
            PriceBook.load(self.bench.price_book).get(self.bench.hardware)
        except TokenworksError as error:
            raise ConfigError(f"in [bench]: {error}") from None

    def section(self, stage: str) -> dict[str, Any]:
        """The settings a stage's output depends on, to fingerprint it for resumption."""
        owned = {"ingest": ["data"], "train": ["train"], "serve": ["serve"], "bench": ["bench"], "report": []}
        return {name: _jsonable(getattr(self, name)) for name in owned[stage]}

    def to_json(self) -> dict[str, Any]:
        return _jsonable(self)


def _override(current: Any, values: dict[str, Any], where: str) -> Any:
    """A copy of the dataclass `current` with `values` applied, checking names and types."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where} must be a table of settings")
    hints = {f.name: f.type for f in fields(current)}  # annotation strings: 'int | None', 'list[str]'
    known = {f.name for f in fields(current)}
    changes: dict[str, Any] = {}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(f"unknown setting {key!r} in {where}; known: {', '.join(sorted(known))}")
        old = getattr(current, key)
        if is_dataclass(old):
            changes[key] = _override(old, value, f"{where} [{key}]")
        else:
            changes[key] = _coerce(value, hints[key], f"{where}: {key}")
    return replace(current, **changes)


def _coerce(value: Any, text: str, where: str) -> Any:
    if "Path" in text:
        return Path(str(value))
    if value is None or (isinstance(value, str) and text.startswith("str")):
        return value
    if text.startswith("list[int]") and isinstance(value, list) and all(type(v) is int for v in value):
        return value
    if text.startswith("list[str]") and isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    if text.startswith("float") and type(value) in (int, float):
        return float(value)
    if text.startswith("int") and type(value) is int:
        return value
    if text.startswith("str") and isinstance(value, str):
        return value
    raise ConfigError(f"{where} should be {text.replace(' | None', '')}, got {value!r}")


def _jsonable(value: Any) -> Any:
    if is_dataclass(value):
        return {f.name: _jsonable(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value
