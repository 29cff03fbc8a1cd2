"""What the server does when its engine core dies.

Whatever the policy, the engine (`AsyncLLM`) has already ended every open stream with an
error and fails new requests, which the routes answer with 503. Then, by default, the
server stops with exit status 1 (as vLLM's does), so that whatever supervises it (systemd,
Kubernetes, a shell loop) starts it afresh. With `--restart-engine` it starts a new core in
the same server instead, answering 503 (with Retry-After) on /health and on requests until
the new core is ready; after MAX_START_FAILURES failed starts in a row it stops too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from tokenworks.engine import EngineDeadError
from tokenworks.serve.state import ServerState

logger = logging.getLogger(__name__)

MAX_START_FAILURES = 3
RETRY_DELAY_S = 1.0  # times the number of failures so far


class EngineSupervisor:
    def __init__(self, state: ServerState) -> None:
        self.state = state
        self._restart: asyncio.Task | None = None

    def engine_died(self, error: EngineDeadError) -> None:
        """AsyncLLM's death callback, on the event loop."""
        state = self.state
        if state.draining or state.exit_code is not None:
            return  # shutting down anyway
        if not state.config.restart_engine:
            logger.error(
                "the engine core died (%s): the server stops; --restart-engine restarts the core instead", error
            )
            state.exit_code = 1
            return
        if not state.restarting:
            state.restarting = True
            self._restart = asyncio.get_running_loop().create_task(self._restart_engine(), name="engine-restart")

    async def _restart_engine(self) -> None:
        state = self.state
        for failures in range(MAX_START_FAILURES):
            logger.warning("the engine core died (%s): starting a new one", state.engine.dead_error)
            try:
                await state.engine.restart()
            except EngineDeadError as error:
                logger.error("the new engine core failed to start: %s", error)
                await asyncio.sleep(RETRY_DELAY_S * (failures + 1))
                continue
            state.metrics.engine_restarts.labels(state.metrics.model_name).inc()
            state.restarting = False
            logger.info("the new engine core is ready: serving again")
            return
        logger.error("the engine core failed to start %d times in a row: the server stops", MAX_START_FAILURES)
        state.restarting = False
        state.exit_code = 1

    async def stop(self) -> None:
        if self._restart is not None and not self._restart.done():
            self._restart.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._restart
