"""POST /v1/completions: text (or token ids) in, one choice per prompt and `n`, JSON or SSE."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from tokenworks.engine import RequestOutput
from tokenworks.serve.errors import APIError, bad_request, json_error_event
from tokenworks.serve.fanout import collect_finals, generate_choices
from tokenworks.serve.logprobs import completion_logprobs
from tokenworks.serve.protocol import ERROR_RESPONSES, CompletionRequest, CompletionResponse, new_id
from tokenworks.serve.sampling import sampling_params
from tokenworks.serve.state import ServerState
from tokenworks.serve.streaming import DONE, ClientGone, EventStream, run_until_disconnect, sse
from tokenworks.serve.usage import StreamUsage, usage

router = APIRouter()


def prompts_of(body: CompletionRequest) -> list[str | list[int]]:
    prompt = body.prompt
    if isinstance(prompt, str):
        return [prompt]
    if not prompt:
        raise APIError(400, "prompt must not be empty", param="prompt")
    if all(isinstance(item, int) for item in prompt):
        return [prompt]  # one prompt as token ids
    return list(prompt)


@router.post(
    "/v1/completions", response_model=CompletionResponse, responses=ERROR_RESPONSES,
    summary="Complete prompts (OpenAI Completions API); stream: true answers with server-sent events.",
)  # fmt: skip
async def create_completion(body: CompletionRequest, raw_request: Request):
    state: ServerState = raw_request.app.state.server
    state.check_open()
    state.check_model(body.model)
    if body.suffix:
        raise APIError(400, "suffix is not supported", param="suffix")
    if body.echo and body.logprobs is not None:
        raise APIError(
            400, "echo with logprobs needs prompt logprobs, which this server does not compute", param="echo"
        )
    prompts = prompts_of(body)
    with bad_request():
        params = sampling_params(body, body.max_tokens, body.logprobs)
        prompt_ids = [state.engine.prepare(prompt, params) for prompt in prompts]
    prompt_texts = [p if isinstance(p, str) else "" for p in prompts]
    if body.echo:
        tokenizer = state.engine.tokenizer
        prompt_texts = [
            p if isinstance(p, str) else (tokenizer.decode(ids) if tokenizer is not None else "")
            for p, ids in zip(prompts, prompt_ids, strict=True)
        ]
    ticket = state.admission.admit(len(prompt_ids) * body.n)
    request_id, created = new_id("cmpl"), int(time.time())
    choices = generate_choices(state, request_id, prompt_ids, params, body.n)
    if body.stream:
        events = _events(state, body, request_id, created, choices, prompt_ids, prompt_texts)
        return EventStream(events, on_close=ticket.release)
    try:
        finals = await run_until_disconnect(raw_request, collect_finals(choices))
    except ClientGone:
        return Response(status_code=499)
    finally:
        ticket.release()
    result = []
    for index in sorted(finals):
        output = finals[index]
        prefix = prompt_texts[index // body.n] if body.echo else ""
        logprobs = None
        if body.logprobs is not None:
            logprobs = completion_logprobs(state.engine.tokenizer, output, 0, 0)
        result.append({
            "index": index, "text": prefix + output.text, "logprobs": logprobs,
            "finish_reason": output.finish_reason, "stop_reason": output.stop_reason,
        })  # fmt: skip
    return JSONResponse({
        "id": request_id, "object": "text_completion", "created": created, "model": state.config.model_name,
        "choices": result, "usage": usage(prompt_ids, finals, body.n), "system_fingerprint": None,
    })  # fmt: skip


async def _events(
    state: ServerState, body: CompletionRequest, request_id: str, created: int,
    choices: AsyncIterator[tuple[int, RequestOutput]], prompt_ids: list[list[int]], prompt_texts: list[str],
) -> AsyncIterator[str]:  # fmt: skip
    stream_usage = StreamUsage(prompt_ids, body.n, body.stream_options)
    offsets: dict[int, int] = {}
    base = {"id": request_id, "object": "text_completion", "created": created, "model": state.config.model_name}
    try:
        async for index, output in choices:
            text = output.delta_text
            if body.echo and index not in offsets:
                text = prompt_texts[index // body.n] + text
            start = len(output.token_ids) - len(output.delta_token_ids)
            wants_logprobs = body.logprobs is not None and output.delta_token_ids
            if not (text or output.finished or wants_logprobs):
                continue
            logprobs = None
            if body.logprobs is not None:
                logprobs = completion_logprobs(state.engine.tokenizer, output, start, offsets.get(index, 0))
                offsets[index] = offsets.get(index, 0) + sum(len(t) for t in logprobs["tokens"])
            else:
                offsets[index] = offsets.get(index, 0) + len(text)
            choice = {
                "index": index, "text": text, "logprobs": logprobs,
                "finish_reason": output.finish_reason, "stop_reason": output.stop_reason,
            }  # fmt: skip
            yield sse(stream_usage.chunk(base, choice, index, output))
        last = stream_usage.last_chunk(base)
        if last is not None:
            yield sse(last)
    except Exception as error:
        yield json_error_event(error)
    yield DONE
