"""`profile.json`: what `tokenworks plan profile` measured on a machine, read back and checked.

Standard library only: the latency models read profiles without torch. A profile holds the
machine, the model's config and its hash, the measured matmul FLOP/s and memory bandwidth, and
every sample: the exact `StepShape` of one real engine step and its seconds (the median of the
repeats of that grid point).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tokenworks.errors import PlanError, TokenworksError
from tokenworks.model.config import ModelConfig
from tokenworks.plan.step import StepShape

FORMAT = 1
REMEDY = "run `tokenworks plan profile MODEL_DIR` to measure it again"


def config_hash(config: ModelConfig) -> str:
    """sha256 of the config as tokenworks reads it (canonical JSON of its config.json), so key
    order and whitespace do not count but every value does."""
    canonical = json.dumps(config.to_hf_dict(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Sample:
    point: str  # the grid point, e.g. "decode 8x256"
    step: StepShape
    seconds: float  # the median step of the point's repeats
    repeats: tuple[float, ...] = ()  # every repeat's seconds, the median among them
    others: float = 0.0  # CPUs that other processes kept busy while the repeats ran

    def as_dict(self) -> dict[str, Any]:
        return {
            "point": self.point, "chunks": [list(chunk) for chunk in self.step.chunks],
            "samples": self.step.num_samples, "seconds": self.seconds, "repeats": list(self.repeats),
            "others": self.others,
        }  # fmt: skip


@dataclass(slots=True)
class Profile:
    machine: dict[str, Any]  # cpu, cores, threads, torch
    model: ModelConfig
    model_hash: str
    engine: dict[str, Any]  # the engine options the steps ran under
    matmul_flops: dict[str, float | None]  # FLOP/s by dtype at the model's shapes (None: not run)
    peak_flops: float  # the one the roofline uses: the model's dtype
    bandwidth: dict[str, float]  # bytes/s: "copy" (read + write), "read"
    peak_bandwidth: float  # the one the roofline uses
    samples: list[Sample] = field(default_factory=list)
    created: str = ""
    quick: bool = False
    seconds: float = 0.0  # how long the profile took

    def save(self, path: str | Path) -> None:
        data = {
            "format": FORMAT, "created": self.created, "quick": self.quick, "seconds": self.seconds,
            "machine": self.machine, "engine": self.engine,
            "model": {"config": asdict(self.model), "config_hash": self.model_hash},
            "measured": {
                "matmul_flops": self.matmul_flops, "peak_flops": self.peak_flops,
                "bandwidth": self.bandwidth, "peak_bandwidth": self.peak_bandwidth,
            },
            "samples": [sample.as_dict() for sample in self.samples],
        }  # fmt: skip
        Path(path).write_text(json.dumps(data, indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Profile:
        """PlanError saying what is wrong (missing, not JSON, a field absent or of the wrong kind)."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise PlanError(f"no profile at {path}; {REMEDY}") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise PlanError(f"the profile {path} cannot be read ({error}); {REMEDY}") from None
        try:
            if data.get("format") != FORMAT:
                raise ValueError(f"format {data.get('format')!r}, this tokenworks reads {FORMAT}")
            measured, model = data["measured"], data["model"]
            samples = [
                Sample(
                    str(entry["point"]),
                    StepShape(tuple((int(n), int(c)) for n, c in entry["chunks"]), int(entry["samples"])),
                    _positive(entry["seconds"], "a sample's seconds"),
                    tuple(float(x) for x in entry.get("repeats", [])),
                    float(entry.get("others", 0.0)),
                )
                for entry in data["samples"]
            ]
            return cls(
                machine=dict(data["machine"]), model=ModelConfig(**model["config"]),
                model_hash=str(model["config_hash"]), engine=dict(data["engine"]),
                matmul_flops=dict(measured["matmul_flops"]), peak_flops=_positive(measured["peak_flops"], "peak_flops"),
                bandwidth=dict(measured["bandwidth"]),
                peak_bandwidth=_positive(measured["peak_bandwidth"], "peak_bandwidth"), samples=samples,
                created=str(data.get("created", "")), quick=bool(data.get("quick", False)),
                seconds=float(data.get("seconds", 0.0)),
            )  # fmt: skip
        except (KeyError, TypeError, ValueError, AttributeError, TokenworksError) as error:
            what = f"lacks {error}" if isinstance(error, KeyError) else f"is not a valid profile ({error})"
            raise PlanError(f"the profile {path} {what}; {REMEDY}") from None

    def check_model(self, config: ModelConfig, origin: str = "the profile") -> None:
        """PlanError unless this profile measured a model of the same config."""
        theirs = config_hash(config)
        if theirs != self.model_hash:
            raise PlanError(
                f"{origin} measured another model (config hash {self.model_hash[:12]}: "
                f"{_shape(self.model)}) than the one asked for ({theirs[:12]}: {_shape(config)}); "
                "profile this model with `tokenworks plan profile MODEL_DIR`"
            )


def _positive(value: Any, name: str) -> float:
    number = float(value)
    if not number > 0:
        raise ValueError(f"{name} must be positive, got {value!r}")
    return number


def _shape(config: ModelConfig) -> str:
    return (
        f"hidden {config.hidden_size}, {config.num_hidden_layers} layers, {config.num_attention_heads} heads, "
        f"vocab {config.vocab_size}, {config.dtype}"
    )
