"""The GPU catalog (`hardware.toml`): datasheet figures with their sources, the efficiency
assumptions kept apart from them, and what tensor parallelism's all-reduces cost.

Standard library only, so planning a fleet never loads torch. A user's TOML file of the same
layout replaces GPUs of the same name, adds new ones, and may replace the assumptions.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, fields
from importlib import resources
from pathlib import Path
from typing import Any

from tokenworks.errors import PlanError

PRECISIONS = ("bf16", "fp8", "fp4")
FIGURES = (
    "bf16_tflops", "fp8_tflops", "fp4_tflops", "hbm_gb", "hbm_tbps", "nvlink_gbps", "nvlink_domain",
    "tdp_watts", "provisioned_watts", "usd_per_hour",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Figure:
    value: float
    source: str  # the page it was read from, or the reasoning where no page gave it
    read: str  # when


@dataclass(frozen=True, slots=True)
class Assumptions:
    """Not datasheet figures: how much of the peaks an engine achieves, and a step's fixed costs."""

    flops_efficiency: float
    bandwidth_efficiency: float
    step_overhead_seconds: float
    chunk_overhead_seconds: float
    allreduce_latency_seconds: float
    reasoning: str


@dataclass(frozen=True, slots=True)
class GPU:
    name: str
    aliases: tuple[str, ...]
    figures: dict[str, Figure]

    def figure(self, key: str) -> float:
        return self.figures[key].value

    def peak_flops(self, precision: str = "bf16") -> float:
        """Dense tensor-core FLOP/s at `precision`."""
        if precision not in PRECISIONS:
            raise PlanError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
        value = self.figure(f"{precision}_tflops")
        if value <= 0:
            raise PlanError(f"{self.name} has no {precision} tensor cores; use one of {', '.join(self.precisions)}")
        return value * 1e12

    @property
    def precisions(self) -> tuple[str, ...]:
        return tuple(p for p in PRECISIONS if self.figure(f"{p}_tflops") > 0)

    @property
    def hbm_bytes(self) -> float:
        return self.figure("hbm_gb") * 1e9

    @property
    def hbm_bytes_per_second(self) -> float:
        return self.figure("hbm_tbps") * 1e12

    @property
    def nvlink_bytes_per_second(self) -> float:
        """One direction's: a ring all-reduce sends and receives at once, each at half the total."""
        return self.figure("nvlink_gbps") * 1e9 / 2

    @property
    def nvlink_domain(self) -> int:
        return int(self.figure("nvlink_domain"))


@dataclass(slots=True)
class Catalog:
    name: str
    read: str
    assumptions: Assumptions
    gpus: dict[str, GPU]  # by match_key(name), aliases included

    @classmethod
    def load(cls, path: str | Path | None = None) -> Catalog:
        """The packaged catalog, with a user's file (if given) replacing or adding GPUs and assumptions."""
        text = resources.files("tokenworks.plan").joinpath("hardware.toml").read_text(encoding="utf-8")
        catalog = cls._parse(text, "the packaged catalog", complete=True)
        if path is not None:
            try:
                text = Path(path).read_text(encoding="utf-8")
            except OSError as error:
                raise PlanError(f"cannot read the hardware catalog {path}: {error.strerror or error}") from None
            user = cls._parse(text, str(path), complete=False)
            catalog.gpus.update(user.gpus)
            if user.assumptions is not None:
                catalog.assumptions = user.assumptions
        return catalog

    def gpu(self, name: str) -> GPU:
        """The GPU of that name or alias (case, spaces and dashes ignored); PlanError naming the known ones."""
        found = self.gpus.get(match_key(name))
        if found is None:
            raise PlanError(f"unknown GPU {name!r}; the catalog has {', '.join(self.names)}")
        return found

    @property
    def names(self) -> list[str]:
        return sorted({gpu.name for gpu in self.gpus.values()})

    @classmethod
    def _parse(cls, text: str, origin: str, complete: bool) -> Catalog:
        data = _toml(text, origin)
        unknown = sorted(set(data) - {"catalog", "assumptions", "gpu"})
        if unknown:
            raise PlanError(
                f"hardware catalog {origin}: unknown tables {unknown}; use [catalog], [assumptions], [[gpu]]"
            )
        meta = data.get("catalog", {})
        assumptions = _assumptions(data["assumptions"], origin) if "assumptions" in data else None
        if complete and (assumptions is None or not {"name", "read"} <= set(meta)):
            raise PlanError(f"hardware catalog {origin} needs [catalog] name and read, and [assumptions]")
        gpus: dict[str, GPU] = {}
        for entry in data.get("gpu", []):
            gpu = _gpu(entry, origin)
            for key in (gpu.name, *gpu.aliases):
                gpus[match_key(key)] = gpu
        return cls(meta.get("name", ""), meta.get("read", ""), assumptions, gpus)


def _toml(text: str, origin: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise PlanError(f"hardware catalog {origin} is not valid TOML: {error}") from None


def match_key(name: str) -> str:
    return re.sub(r"[\s_\-]+", "", name).lower()


def _gpu(entry: dict[str, Any], origin: str) -> GPU:
    name = entry.get("name")
    if not isinstance(name, str) or not name:
        raise PlanError(f"hardware catalog {origin}: a [[gpu]] entry has no name")
    where = f"hardware catalog {origin}, GPU {name!r}"
    unknown = set(entry) - {"name", "aliases", *FIGURES}
    if unknown:
        raise PlanError(f"{where}: unknown field(s) {sorted(unknown)}; the fields are {', '.join(FIGURES)}")
    figures = {}
    for key in FIGURES:
        figure = entry.get(key)
        if not isinstance(figure, dict) or set(figure) != {"value", "source", "read"}:
            raise PlanError(f'{where}: {key} must be {{ value = ..., source = "...", read = "YYYY-MM-DD" }}')
        value, source, read = figure["value"], figure["source"], figure["read"]
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise PlanError(f"{where}: {key}'s value must be a number of at least 0, got {value!r}")
        if not isinstance(source, str) or not source.strip() or not isinstance(read, str) or not read.strip():
            raise PlanError(f"{where}: {key} needs a source and the date it was read")
        figures[key] = Figure(float(value), source, read)
    aliases = entry.get("aliases", [])
    if not isinstance(aliases, list) or not all(isinstance(alias, str) for alias in aliases):
        raise PlanError(f"{where}: aliases must be a list of names")
    return GPU(name, tuple(aliases), figures)


def _assumptions(table: dict[str, Any], origin: str) -> Assumptions:
    names = [f.name for f in fields(Assumptions)]
    if set(table) != set(names):
        raise PlanError(f"hardware catalog {origin}, [assumptions]: needs exactly {', '.join(names)}")
    for key in names[:-1]:
        value = table[key]
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise PlanError(f"hardware catalog {origin}, [assumptions]: {key} must be a number of at least 0")
    if not 0 < table["flops_efficiency"] <= 1 or not 0 < table["bandwidth_efficiency"] <= 1:
        raise PlanError(f"hardware catalog {origin}, [assumptions]: efficiencies are fractions in (0, 1]")
    return Assumptions(**table)


def allreduce_seconds(num_bytes: float, tp: int, link_bytes_per_second: float, latency_seconds: float) -> float:
    """One ring all-reduce of `num_bytes` over `tp` GPUs: each GPU sends (and receives) 2 (tp - 1) / tp
    of the buffer, reduce-scatter then all-gather, at one direction's link bandwidth, plus a fixed
    latency. Nothing to reduce on one GPU."""
    if tp <= 1:
        return 0.0
    return 2 * (tp - 1) / tp * num_bytes / link_bytes_per_second + latency_seconds


def tensor_parallel_seconds(
    num_tokens: int, hidden_size: int, num_layers: int, activation_bytes: float, tp: int,
    link_bytes_per_second: float, latency_seconds: float,
) -> float:  # fmt: skip
    """A step's communication under tensor parallelism: two all-reduces per layer (after the
    attention's output projection and after the MLP's down projection), each of the step's
    (tokens, hidden) activations."""
    buffer = num_tokens * hidden_size * activation_bytes
    return 2 * num_layers * allreduce_seconds(buffer, tp, link_bytes_per_second, latency_seconds)
