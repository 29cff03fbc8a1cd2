"""What the server is and how it is doing: GET /v1/models, /health and /metrics."""

from __future__ import annotations

import asyncio
import contextlib

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from tokenworks.serve.errors import error_response
from tokenworks.serve.protocol import ModelList
from tokenworks.serve.state import ServerState

router = APIRouter()
STATS_TIMEOUT_S = 2.0


@router.get("/v1/models", response_model=ModelList, summary="The base model and its LoRA adapters.")
async def list_models(request: Request):
    state: ServerState = request.app.state.server
    base = state.config.model_name

    def card(name: str, root: str, parent: str | None) -> dict:
        return {
            "id": name, "object": "model", "created": state.created, "owned_by": "tokenworks", "root": root,
            "parent": parent, "max_model_len": state.engine.max_model_len,
        }  # fmt: skip

    adapters = [card(name, path, base) for name, path in state.engine.loras.items()]
    return {"object": "list", "data": [card(base, str(state.config.model), None), *adapters]}


@router.get("/kv_events", summary="Where the engine publishes its KV cache events (vLLM's layout), and its block size.")
async def kv_events(request: Request):
    state: ServerState = request.app.state.server
    ready = state.engine.frontend.ready
    published = ready.kv_events or {"enable_kv_cache_events": False}
    tokenizer = state.engine.tokenizer  # its fingerprint: a router with the same hands over token ids (pretokenized.py)
    return {**published, "block_size": ready.block_size, "tokenizer": tokenizer.fingerprint if tokenizer else None}


@router.get("/health", summary="200 while the engine is alive and the server accepts requests, else 503.")
async def health(request: Request):
    error = request.app.state.server.unavailable()
    if error is not None:
        return error_response(error.status, error.message, code=error.code, headers=error.headers)
    return {"status": "ok"}


async def refresh_engine_gauges(state: ServerState) -> None:
    """Read the engine's gauges (running, waiting, KV cache, prefix cache) into the metrics, for a scrape."""
    stats = state.engine.last_stats
    alive = state.engine.dead_error is None
    if alive:
        with contextlib.suppress(Exception):  # a busy or dead core: report the last stats seen
            stats = await asyncio.wait_for(state.engine.call("stats"), STATS_TIMEOUT_S)
    state.metrics.update_engine(stats, alive, state.admission.in_flight)


@router.get("/metrics", summary="Prometheus metrics (text exposition format).")
async def metrics(request: Request):
    state: ServerState = request.app.state.server
    await refresh_engine_gauges(state)
    return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)
