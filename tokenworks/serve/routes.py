"""The small routes: models, health, metrics, tokenize and detokenize."""

from __future__ import annotations

import asyncio
import contextlib

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from tokenworks.serve.chat import render_messages
from tokenworks.serve.completions import ERRORS
from tokenworks.serve.errors import APIError, error_response
from tokenworks.serve.protocol import (
    DetokenizeRequest,
    DetokenizeResponse,
    ModelList,
    TokenizeRequest,
    TokenizeResponse,
)  # fmt: skip
from tokenworks.serve.serving import ServerState, bad_request, token_text

router = APIRouter()
STATS_TIMEOUT_S = 2.0


def _state(request: Request) -> ServerState:
    return request.app.state.server


@router.get("/v1/models", response_model=ModelList, summary="The model this server serves.")
async def list_models(request: Request):
    state = _state(request)
    card = {
        "id": state.config.model_name, "object": "model", "created": state.created, "owned_by": "tokenworks",
        "root": str(state.config.model), "max_model_len": state.engine.max_model_len,
    }  # fmt: skip
    return {"object": "list", "data": [card]}


@router.get("/health", summary="200 while the engine is alive and the server accepts requests, else 503.")
async def health(request: Request):
    state = _state(request)
    if state.engine.dead_error is not None:
        return error_response(503, f"the engine is not available: {state.engine.dead_error}", code="engine_unavailable")
    if state.draining:
        return error_response(503, "the server is shutting down", code="shutting_down")
    return {"status": "ok"}


async def refresh_engine_gauges(state: ServerState) -> None:
    """Read the engine's gauges (running, waiting, KV cache, prefix cache) into the metrics, for a scrape."""
    stats = state.engine.last_stats
    if state.engine.dead_error is None:
        with contextlib.suppress(Exception):  # a busy or dead core: report the last stats seen
            stats = await asyncio.wait_for(state.engine.call("stats"), STATS_TIMEOUT_S)
    state.metrics.update_engine(stats, state.engine.dead_error is None, state.in_flight)


@router.get("/metrics", summary="Prometheus metrics (text exposition format).")
async def metrics(request: Request):
    state = _state(request)
    await refresh_engine_gauges(state)
    return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)


def _tokenizer_for(state, model: str | None):
    """The served model's tokenizer, after checking the model name; 400 when it has none."""
    state.check_model(model)
    if state.engine.tokenizer is None:
        raise APIError(400, "this model directory has no tokenizer.json")
    return state.engine.tokenizer


@router.post("/tokenize", response_model=TokenizeResponse, responses=ERRORS, summary="Text or messages to token ids.")
async def tokenize(body: TokenizeRequest, request: Request):
    state = _state(request)
    tokenizer = _tokenizer_for(state, body.model)
    if (body.prompt is None) == (body.messages is None):
        raise APIError(400, "give exactly one of prompt or messages", param="prompt")
    if body.messages is not None:
        text = render_messages(state, body.messages, body.add_generation_prompt)
    else:
        text = body.prompt
    with bad_request():
        tokens = tokenizer.encode(text)
    strs = [token_text(state, t) for t in tokens] if body.return_token_strs else None
    return {"count": len(tokens), "max_model_len": state.engine.max_model_len, "tokens": tokens, "token_strs": strs}


@router.post("/detokenize", response_model=DetokenizeResponse, responses=ERRORS, summary="Token ids to text.")
async def detokenize(body: DetokenizeRequest, request: Request):
    state = _state(request)
    tokenizer = _tokenizer_for(state, body.model)
    vocab = tokenizer.vocab_size
    bad = next((t for t in body.tokens if not 0 <= t < vocab), None)
    if bad is not None:
        raise APIError(400, f"token id {bad} is out of range: ids must be in [0, {vocab})", param="tokens")
    with bad_request():
        return JSONResponse({"prompt": tokenizer.decode(body.tokens)})
