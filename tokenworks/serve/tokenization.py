"""POST /tokenize and /detokenize: the served model's tokenizer (and chat template), as vLLM offers them."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from tokenworks.model.tokenizer import Tokenizer
from tokenworks.serve.chat import render_messages
from tokenworks.serve.errors import APIError, bad_request
from tokenworks.serve.logprobs import token_text
from tokenworks.serve.protocol import (
    ERROR_RESPONSES,
    DetokenizeRequest,
    DetokenizeResponse,
    TokenizeRequest,
    TokenizeResponse,
)  # fmt: skip
from tokenworks.serve.state import ServerState

router = APIRouter()


def _tokenizer_for(state: ServerState, model: str | None) -> Tokenizer:
    """The served model's tokenizer, after checking the model name; 400 when it has none."""
    state.check_model(model)
    if state.engine.tokenizer is None:
        raise APIError(400, "this model directory has no tokenizer.json")
    return state.engine.tokenizer


@router.post(
    "/tokenize", response_model=TokenizeResponse, responses=ERROR_RESPONSES, summary="Text or messages to token ids."
)
async def tokenize(body: TokenizeRequest, request: Request):
    state: ServerState = request.app.state.server
    tokenizer = _tokenizer_for(state, body.model)
    if (body.prompt is None) == (body.messages is None):
        raise APIError(400, "give exactly one of prompt or messages", param="prompt")
    if body.messages is not None:
        text = render_messages(state, body.messages, body.add_generation_prompt)
    else:
        text = body.prompt
    with bad_request():
        tokens = tokenizer.encode(text)
    strs = [token_text(tokenizer, t) for t in tokens] if body.return_token_strs else None
    return {"count": len(tokens), "max_model_len": state.engine.max_model_len, "tokens": tokens, "token_strs": strs}


@router.post("/detokenize", response_model=DetokenizeResponse, responses=ERROR_RESPONSES, summary="Token ids to text.")
async def detokenize(body: DetokenizeRequest, request: Request):
    state: ServerState = request.app.state.server
    tokenizer = _tokenizer_for(state, body.model)
    vocab = tokenizer.vocab_size
    bad = next((t for t in body.tokens if not 0 <= t < vocab), None)
    if bad is not None:
        raise APIError(400, f"token id {bad} is out of range: ids must be in [0, {vocab})", param="tokens")
    with bad_request():
        return JSONResponse({"prompt": tokenizer.decode(body.tokens)})
