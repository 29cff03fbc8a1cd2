"""Which stages of a factory run have finished, with what settings: `WORKDIR/factory.json`.

A stage counts as done only if it finished with the same settings as now, for itself and every
stage before it (its fingerprint). So a re-run resumes after the last stage that still holds,
a changed setting re-runs from the first stage it affects, and a failure keeps the record of
everything that finished before it.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from tokenworks.errors import ConfigError
from tokenworks.factory.config import STAGES, FactoryConfig

STATE_FILE = "factory.json"


@dataclass(slots=True)
class StageRecord:
    status: Literal["done", "failed"]
    fingerprint: str
    finished_at: float  # wall-clock seconds since the epoch
    seconds: float
    summary: dict[str, Any] = field(default_factory=dict)  # what the report shows of this stage
    error: str | None = None


class FactoryState:
    def __init__(self, workdir: Path) -> None:
        self.path = workdir / STATE_FILE
        self.stages: dict[str, StageRecord] = {}
        if self.path.is_file():
            saved = json.loads(self.path.read_text(encoding="utf-8"))
            self.stages = {name: StageRecord(**record) for name, record in saved.get("stages", {}).items()}

    @staticmethod
    def fingerprint(config: FactoryConfig, stage: str) -> str:
        """A hash of the settings of this stage and of every stage feeding it."""
        upstream = STAGES[: STAGES.index(stage) + 1]
        settings = {name: config.section(name) for name in upstream}
        return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]

    def is_done(self, config: FactoryConfig, stage: str) -> bool:
        record = self.stages.get(stage)
        return record is not None and record.status == "done" and record.fingerprint == self.fingerprint(config, stage)

    def first_to_run(self, config: FactoryConfig, start: str | None) -> int:
        """The index of the first stage to run: `start` when given, else the first one not done."""
        if start is not None:
            missing = [stage for stage in STAGES[: STAGES.index(start)] if not self.is_done(config, stage)]
            if missing:
                raise ConfigError(
                    f"cannot start at {start!r}: {missing[0]!r} has not finished with these settings; "
                    f"run without --from (or --from {missing[0]})"
                )
            return STAGES.index(start)
        for index, stage in enumerate(STAGES):
            if not self.is_done(config, stage):
                return index
        return len(STAGES)

    def record(self, config: FactoryConfig, stage: str, seconds: float, summary: dict, error: str | None) -> None:
        self.stages[stage] = StageRecord(
            status="failed" if error else "done",
            fingerprint=self.fingerprint(config, stage),
            finished_at=time.time(),
            seconds=seconds,
            summary=summary,
            error=error,
        )
        for later in STAGES[STAGES.index(stage) + 1 :]:  # built on what this stage just replaced
            self.stages.pop(later, None)
        self.save(config)

    def save(self, config: FactoryConfig) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        document = {
            "config": config.to_json(),
            "stages": {name: asdict(record) for name, record in self.stages.items()},
        }
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
        temporary.replace(self.path)
