"""The live display of `tokenworks flywheel run`: one line per stage (waiting, running, done, with
what it found) and the candidate's training bar, on stderr."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from tokenworks.flywheel.loop import STAGES

_MARK = {"waiting": "[dim]·[/]", "running": "[yellow]>[/]", "done": "[green]✓[/]"}


class RunView:
    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.status = {stage: "waiting" for stage in STAGES}
        self.detail = {stage: "" for stage in STAGES}
        self.began: dict[str, float] = {}
        self.bar = Progress(TextColumn("  train"), BarColumn(), TextColumn("step {task.completed}/{task.total}"),
                            TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn())  # fmt: skip
        self.task = None
        self.live = Live(self._render(), console=self.console, refresh_per_second=4, transient=False)

    def __enter__(self) -> RunView:
        self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.live.update(self._render())
        self.live.__exit__(*exc)

    def reset(self) -> None:
        """A new iteration (--watch): every stage waiting again."""
        self.status = {stage: "waiting" for stage in STAGES}
        self.detail = {stage: "" for stage in STAGES}
        self.task = None
        self.bar = Progress(*self.bar.columns)
        self.live.update(self._render())

    def start(self, stage: str, detail: str = "") -> None:
        if self.status[stage] != "running":
            self.began[stage] = time.perf_counter()
        self.status[stage], self.detail[stage] = "running", detail
        self.live.update(self._render())

    def finish(self, stage: str, detail: str) -> None:
        seconds = time.perf_counter() - self.began.get(stage, time.perf_counter())
        self.status[stage], self.detail[stage] = "done", f"{detail} [dim]({seconds:.1f} s)[/]"
        self.live.update(self._render())

    def train_event(self, record: dict[str, Any]) -> None:
        if record.get("kind") == "eval":
            return
        if self.task is None:
            self.task = self.bar.add_task("train", total=record.get("horizon"), loss="-")
        self.bar.update(self.task, completed=record["step"], loss=f"{record['loss']:.3f}")
        self.live.update(self._render())

    def _render(self) -> Group:
        table = Table.grid(padding=(0, 1))
        for stage in STAGES:
            table.add_row(_MARK[self.status[stage]], f"[bold]{stage}[/]", self.detail[stage])
        return Group(table, self.bar) if self.task is not None and self.status["train"] == "running" else Group(table)
