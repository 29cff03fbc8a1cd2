"""The FastAPI application: middlewares, routes, error handlers, and the engine's lifetime.

The lifespan starts the `AsyncLLM` (its core in its own process) before the first request
and shuts it down after the last one, so a server that is up has an engine to serve with.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI

from tokenworks import __version__
from tokenworks.serve.auth import ApiKeyMiddleware
from tokenworks.serve.config import ServerConfig
from tokenworks.serve.errors import BodySizeLimitMiddleware, install_error_handlers
from tokenworks.serve.metrics import HTTPMetricsMiddleware, ServerMetrics
from tokenworks.serve.serving import ServerState

logger = logging.getLogger(__name__)


def create_app(config: ServerConfig) -> FastAPI:
    config.validate()
    metrics = ServerMetrics(config.model_name)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        from tokenworks.engine import AsyncLLM

        engine = AsyncLLM(config.model, **config.engine_options)
        capacity = engine.options.max_num_seqs + config.max_queued_requests
        state = ServerState(config, engine, metrics, capacity)
        app.state.server = state
        logger.info("serving %s as %r (context %d tokens)", config.model, config.model_name, engine.max_model_len)
        try:
            yield
        finally:
            state.draining = True
            await engine.shutdown()

    app = FastAPI(
        title="tokenworks", version=__version__, lifespan=lifespan,
        description="An OpenAI-compatible server over the tokenworks engine.",
    )  # fmt: skip
    from tokenworks.serve import chat, completions, dashboard, routes

    app.include_router(completions.router)
    app.include_router(chat.router)
    app.include_router(routes.router)
    app.include_router(dashboard.router)
    install_error_handlers(app)
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=config.max_body_bytes)
    if config.api_key:
        app.add_middleware(ApiKeyMiddleware, api_key=config.api_key)
    app.add_middleware(HTTPMetricsMiddleware, metrics=metrics)
    app.state.metrics = metrics
    return app
