"""The FastAPI application: middlewares, routes, error handlers, and the engine's lifetime.

The lifespan starts the `AsyncLLM` (its core in its own process) before the first request,
without blocking the event loop while the model loads, and shuts it down after the last
one, so a server that is up has an engine to serve with. What happens when the core dies
later is the supervisor's business (supervisor.py).
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI

from tokenworks import __version__
from tokenworks.engine import AsyncLLM
from tokenworks.errors import TokenworksError
from tokenworks.flywheel.writer import LogWriter
from tokenworks.gc_tuning import calm_the_garbage_collector
from tokenworks.serve import chat, completions, dashboard, feedback, lora, status, tokenization
from tokenworks.serve.admission import Admission
from tokenworks.serve.auth import ApiKeyMiddleware
from tokenworks.serve.config import ServerConfig
from tokenworks.serve.errors import BodySizeLimitMiddleware, install_error_handlers
from tokenworks.serve.metrics import HTTPMetricsMiddleware, ServerMetrics
from tokenworks.serve.state import ServerState
from tokenworks.serve.supervisor import EngineSupervisor

logger = logging.getLogger(__name__)


def create_app(config: ServerConfig) -> FastAPI:
    config.validate()
    metrics = ServerMetrics(config.model_name)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        try:
            engine = await AsyncLLM.start(config.model, **config.engine_start_options)
        except TokenworksError as error:  # a bad checkpoint, a core that died loading it
            app.state.startup_error = error
            raise
        admission = Admission(engine.options.max_num_seqs + config.max_queued_requests)
        # The writer's thread opens the file and applies the retention: nothing here waits on disk.
        request_log = None
        if config.log_db is not None:
            request_log = LogWriter(
                config.log_db, config.log_flush_interval, retention_days=config.log_retention_days,
                redact_pii=config.log_redact_pii,
            )  # fmt: skip
        state = ServerState(config, engine, metrics, admission, request_log)
        supervisor = EngineSupervisor(state)
        engine.on_death(supervisor.engine_died)
        app.state.server = state
        calm_the_garbage_collector()
        logger.info("serving %s as %r (context %d tokens)", config.model, config.model_name, engine.max_model_len)
        try:
            yield
        finally:
            state.draining = True
            await supervisor.stop()
            await engine.shutdown()
            if request_log is not None:  # after the last request: its row is committed too
                await asyncio.to_thread(request_log.close)

    app = FastAPI(
        title="tokenworks", version=__version__, lifespan=lifespan,
        description="An OpenAI-compatible server over the tokenworks engine.",
    )  # fmt: skip
    app.include_router(completions.router)
    app.include_router(chat.router)
    app.include_router(feedback.router)
    app.include_router(tokenization.router)
    app.include_router(lora.router)
    app.include_router(status.router)
    app.include_router(dashboard.router)
    install_error_handlers(app)
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=config.max_body_bytes)
    if config.api_key:
        app.add_middleware(ApiKeyMiddleware, api_key=config.api_key)
    app.add_middleware(HTTPMetricsMiddleware, metrics=metrics)
    app.add_middleware(StartupErrorMessage)
    app.state.metrics = metrics
    return app


class StartupErrorMessage:
    """A start-up that fails for a reason we know (a TokenworksError) is reported as its one-line
    message, not as the traceback Starlette would hand uvicorn to print."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return
        app_state = scope["app"].state

        async def send_short_failure(message):
            error = getattr(app_state, "startup_error", None)
            if message["type"] == "lifespan.startup.failed" and error is not None:
                message = {**message, "message": f"{type(error).__name__}: {error}"}
            await send(message)

        await self.app(scope, receive, send_short_failure)
