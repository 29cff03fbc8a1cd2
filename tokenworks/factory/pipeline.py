"""`tokenworks factory`: ingest -> train -> serve -> bench -> flywheel -> plan -> report, resumable stage by stage.

The line keeps its state in WORKDIR/factory.json: a re-run skips every stage that finished
with the same settings, `start` re-runs from a named stage, and a failed stage is recorded
with its reason while everything finished before it stays. The server runs as a real
`tokenworks serve` process for the serve, bench and flywheel stages and stops before the report.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console

from tokenworks.errors import TokenworksError
from tokenworks.factory.config import STAGES, FactoryConfig
from tokenworks.factory.stages import STAGE_RUNNERS, StageContext, start_server
from tokenworks.factory.state import FactoryState

SERVER_STAGES = ("serve", "bench", "flywheel")


class StageFailed(TokenworksError):
    def __init__(self, stage: str, reason: str, workdir: str) -> None:
        super().__init__(
            f"stage {stage!r} failed: {reason}\n"
            f"The stages before it are kept in {workdir}; run the same command again to resume at {stage!r}."
        )
        self.stage = stage


@dataclass(slots=True)
class FactoryRun:
    config: FactoryConfig
    ran: list[str]  # the stages this invocation ran
    resumed: list[str]  # the stages it took from an earlier run
    summaries: dict[str, dict[str, Any]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


def run_factory(
    config: FactoryConfig,
    start: str | None = None,
    console: Console | None = None,
    on_stage: Callable[[str, bool], None] | None = None,
    keep_serving: Callable[[str], None] | None = None,
) -> FactoryRun:
    """Run the stages that are not done (or every stage from `start`).

    `on_stage(name, resumed)` is told about each stage before it runs or is skipped;
    `keep_serving(url)`, when given, is called with the server still up after the bench stage
    (the CLI blocks there until Ctrl-C so the user can keep watching the dashboard).
    """
    if start is not None and start not in STAGES:
        raise TokenworksError(f"unknown stage {start!r}; the stages are {', '.join(STAGES)}")
    config.check()
    console = console or Console()
    state = FactoryState(config.workdir)
    first = state.first_to_run(config, start)
    run = FactoryRun(config, ran=list(STAGES[first:]), resumed=list(STAGES[:first]))
    context = StageContext(config, console, run.summaries)
    for stage in run.resumed:
        run.summaries[stage] = state.stages[stage].summary
        run.seconds[stage] = state.stages[stage].seconds
        if on_stage:
            on_stage(stage, True)

    with ExitStack() as server_scope:
        for stage in run.ran:
            if stage == "report" and context.server is not None:
                if keep_serving is not None:
                    if not context.server.running:  # the bench stage's comparison stopped it for its own fleets
                        context.server.start()
                    keep_serving(context.server.url)
                server_scope.close()
                context.server = None
            if on_stage:
                on_stage(stage, False)
            began = time.perf_counter()
            try:
                if stage in SERVER_STAGES and context.server is None:
                    context.server = server_scope.enter_context(start_server(context))
                elif stage in SERVER_STAGES and not context.server.running:  # the bench's comparison stopped it
                    context.server.start()
                summary = STAGE_RUNNERS[stage](context)
            except (TokenworksError, OSError) as error:  # the user's to fix; a bug keeps its traceback
                state.record(config, stage, time.perf_counter() - began, {}, str(error))
                raise StageFailed(stage, str(error), str(config.workdir)) from error
            run.seconds[stage] = time.perf_counter() - began
            run.summaries[stage] = summary | {"seconds": round(run.seconds[stage], 2)}
            state.record(config, stage, run.seconds[stage], run.summaries[stage], None)
    return run
