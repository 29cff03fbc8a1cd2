"""POST /v1/completions: text (or token ids) in, one choice per prompt and `n`, JSON or SSE."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from tokenworks.engine import RequestOutput
from tokenworks.model.tokenizer import Tokenizer
from tokenworks.serve.errors import APIError, bad_request, json_error_event
from tokenworks.serve.fanout import collect_finals, generate_choices
from tokenworks.serve.logprobs import completion_logprobs, join_logprobs, legacy_logprobs, prompt_logprobs
from tokenworks.serve.pretokenized import prompt_of
from tokenworks.serve.protocol import ERROR_RESPONSES, CompletionRequest, CompletionResponse, new_id
from tokenworks.serve.request_logging import RequestTrace, Untraced, trace_request
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
    trace = trace_request(raw_request, body, "completions")
    state.check_open()
    lora = state.check_model(body.model)
    served = lora or state.config.model_name
    if body.suffix:
        raise APIError(400, "suffix is not supported", param="suffix")
    if body.best_of is not None and body.best_of != body.n:
        raise APIError(400, "best_of is not supported: leave it out, or equal to n", param="best_of")
    if body.stream and body.prompt_logprobs is not None:
        raise APIError(
            400, "prompt_logprobs are not streamed: ask without stream, or stream echo with logprobs",
            param="prompt_logprobs",
        )  # fmt: skip
    # max_tokens 0 with echo scores the prompt alone (lm-evaluation-harness asks this way): the
    # engine makes one token, which the answer leaves out, as vLLM does.
    echo_only = body.echo and body.max_tokens == 0
    if body.max_tokens == 0 and not body.echo:
        raise APIError(400, "max_tokens must be at least 1 (0 only with echo: the prompt alone)", param="max_tokens")
    # Echo with logprobs gives the prompt's tokens logprobs too: the engine scores the prompt.
    scored_prompt = body.prompt_logprobs
    if scored_prompt is None and body.echo and body.logprobs is not None:
        scored_prompt = body.logprobs
    prompts = prompts_of(body)
    with bad_request():
        params = sampling_params(body, 1 if echo_only else body.max_tokens, body.logprobs, scored_prompt)
        tokenizer = state.engine.tokenizer
        # (the router's token ids of a prompt, if it sent them, spare tokenizing it again)
        prompt_ids = [state.engine.prepare(prompt_of(raw_request.headers, tokenizer, p), params, lora) for p in prompts]
    prompt_texts = [p if isinstance(p, str) else "" for p in prompts]
    if body.echo:
        prompt_texts = [
            p if isinstance(p, str) else (tokenizer.decode(ids) if tokenizer is not None else "")
            for p, ids in zip(prompts, prompt_ids, strict=True)
        ]
    ticket = state.admission.admit(len(prompt_ids) * body.n)
    request_id, created = new_id("cmpl"), int(time.time())
    choices = trace.watch(request_id, generate_choices(state, request_id, prompt_ids, params, body.n, lora))
    if echo_only:
        choices = _prompt_only(choices)
    if body.stream:
        events = _events(state, body, served, request_id, created, choices, prompt_ids, prompt_texts, trace)
        return EventStream(events, on_close=ticket.release)
    try:
        finals = await run_until_disconnect(raw_request, collect_finals(choices))
    except ClientGone:
        return Response(status_code=499)
    finally:
        ticket.release()
    answer = _answer(state, body, served, request_id, created, finals, prompt_ids, prompt_texts)
    trace.answered(answer)
    return JSONResponse(answer)


def _answer(
    state: ServerState, body: CompletionRequest, served: str, request_id: str, created: int,
    finals: dict[int, RequestOutput], prompt_ids: list[list[int]], prompt_texts: list[str],
) -> dict:  # fmt: skip
    """The whole answer from each choice's final output (also what the request log keeps of a stream)."""
    tokenizer = state.engine.tokenizer
    result = []
    for index in sorted(finals):
        output = finals[index]
        prefix = prompt_texts[index // body.n] if body.echo else ""
        logprobs = None
        if body.logprobs is not None:
            logprobs = (
                _with_echo(tokenizer, output, 0, 0) if body.echo else completion_logprobs(tokenizer, output, 0, 0)
            )
        choice = {
            "index": index, "text": prefix + output.text, "logprobs": logprobs,
            "finish_reason": output.finish_reason, "stop_reason": output.stop_reason,
        }  # fmt: skip
        if body.prompt_logprobs is not None:
            choice["prompt_logprobs"] = prompt_logprobs(tokenizer, output)
        result.append(choice)
    return {
        "id": request_id, "object": "text_completion", "created": created, "model": served,
        "choices": result, "usage": usage(prompt_ids, finals, body.n), "system_fingerprint": None,
    }  # fmt: skip


async def _prompt_only(
    choices: AsyncIterator[tuple[int, RequestOutput]],
) -> AsyncIterator[tuple[int, RequestOutput]]:
    """The outputs of a max_tokens 0 request: the token made to score the prompt left out.
    Closing this closes `choices` at once (a client gone aborts the engine requests)."""
    async with contextlib.aclosing(choices):
        async for index, output in choices:
            blank = dataclasses.replace(output, token_ids=[], text="", delta_token_ids=[], delta_text="", logprobs=[])
            yield index, blank


def _with_echo(tokenizer: Tokenizer | None, output: RequestOutput, start: int, offset: int) -> dict[str, list]:
    """Legacy logprobs of the echoed prompt, then of output tokens [start:], offsets running on."""
    prompt = legacy_logprobs(tokenizer, output.prompt_token_ids, output.prompt_logprobs or [])
    if prompt["tokens"]:
        offset = prompt["text_offset"][-1] + len(prompt["tokens"][-1])
    return join_logprobs(prompt, completion_logprobs(tokenizer, output, start, offset))


async def _events(
    state: ServerState, body: CompletionRequest, served: str, request_id: str, created: int,
    choices: AsyncIterator[tuple[int, RequestOutput]], prompt_ids: list[list[int]], prompt_texts: list[str],
    trace: RequestTrace | Untraced,
) -> AsyncIterator[str]:  # fmt: skip
    stream_usage = StreamUsage(prompt_ids, body.n, body.stream_options)
    offsets: dict[int, int] = {}  # of each choice's next token text, counted as the logprobs count it
    tokenizer = state.engine.tokenizer
    base = {"id": request_id, "object": "text_completion", "created": created, "model": served}
    try:
        async for index, output in choices:
            first = index not in offsets
            text = output.delta_text
            if body.echo and first:
                text = prompt_texts[index // body.n] + text
            start = len(output.token_ids) - len(output.delta_token_ids)
            wants_logprobs = body.logprobs is not None and (output.delta_token_ids or (body.echo and first))
            if not (text or output.finished or wants_logprobs):
                continue
            logprobs = None
            if body.logprobs is not None:
                if body.echo and first:
                    logprobs = _with_echo(tokenizer, output, start, 0)
                else:
                    logprobs = completion_logprobs(tokenizer, output, start, offsets.get(index, 0))
                if logprobs["tokens"]:
                    offsets[index] = logprobs["text_offset"][-1] + len(logprobs["tokens"][-1])
                else:
                    offsets.setdefault(index, 0)
            else:
                offsets[index] = offsets.get(index, 0) + len(text)
            choice = {
                "index": index, "text": text, "logprobs": logprobs,
                "finish_reason": output.finish_reason, "stop_reason": output.stop_reason,
            }  # fmt: skip
            yield sse(stream_usage.chunk(base, choice, index, output))
        trace.answered(
            lambda: _answer(state, body, served, request_id, created, stream_usage.finals, prompt_ids, prompt_texts)
        )
        last = stream_usage.last_chunk(base)
        if last is not None:
            yield sse(last)
    except Exception as error:
        yield json_error_event(error)
    yield DONE
