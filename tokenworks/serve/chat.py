"""POST /v1/chat/completions: messages through the model's chat template, JSON or SSE."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from tokenworks.engine import RequestOutput
from tokenworks.serve.errors import APIError, bad_request, json_error_event
from tokenworks.serve.fanout import collect_finals, generate_choices
from tokenworks.serve.logprobs import chat_logprobs, prompt_logprobs
from tokenworks.serve.pretokenized import prompt_of
from tokenworks.serve.protocol import (
    ERROR_RESPONSES,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatMessage,
    new_id,
)  # fmt: skip
from tokenworks.serve.request_logging import RequestTrace, Untraced, trace_request
from tokenworks.serve.sampling import sampling_params
from tokenworks.serve.state import ServerState
from tokenworks.serve.streaming import DONE, ClientGone, EventStream, run_until_disconnect, sse
from tokenworks.serve.tool_calls import ToolCallStream, parse_tool_calls, tool_use_of
from tokenworks.serve.usage import StreamUsage, usage

router = APIRouter()


def render_messages(
    state: ServerState, messages: list[ChatMessage], add_generation_prompt: bool, tools: list[dict] | None = None
) -> str:
    tokenizer = state.engine.tokenizer
    if tokenizer is None:
        raise APIError(400, "this model has no tokenizer, so no chat template: use /v1/completions with token ids")
    with bad_request():
        return tokenizer.apply_chat_template(
            [message.model_dump(exclude_none=True) for message in messages], add_generation_prompt, tools
        )


@router.post(
    "/v1/chat/completions", response_model=ChatCompletionResponse,
    responses=ERROR_RESPONSES,
    summary="Answer a conversation (OpenAI Chat Completions API); stream: true answers with server-sent events.",
)  # fmt: skip
async def create_chat_completion(body: ChatCompletionRequest, raw_request: Request):
    state: ServerState = raw_request.app.state.server
    trace = trace_request(raw_request, body, "chat.completions")
    state.check_open()
    lora = state.check_model(body.model)
    served = lora or state.config.model_name
    if body.top_logprobs is not None and not body.logprobs:
        raise APIError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
    if body.stream and body.prompt_logprobs is not None:
        raise APIError(400, "prompt_logprobs are not streamed: ask without stream", param="prompt_logprobs")
    tools = tool_use_of(body, state.engine.tokenizer)
    prompt = render_messages(state, body.messages, body.add_generation_prompt, tools.rendered)
    max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    k = (body.top_logprobs or 0) if body.logprobs else None
    with bad_request():
        params = sampling_params(body, max_tokens, k, body.prompt_logprobs, tools.forced)
        tokens = prompt_of(raw_request.headers, state.engine.tokenizer, prompt)  # the router's ids, if it sent them
        prompt_ids = [state.engine.prepare(tokens, params, lora)]
    ticket = state.admission.admit(body.n)
    request_id, created = new_id("chatcmpl"), int(time.time())
    choices = trace.watch(request_id, generate_choices(state, request_id, prompt_ids, params, body.n, lora))
    if body.stream:
        events = _events(state, body, served, request_id, created, choices, prompt_ids, tools.parse, trace)
        return EventStream(events, on_close=ticket.release)
    try:
        finals = await run_until_disconnect(raw_request, collect_finals(choices))
    except ClientGone:
        return Response(status_code=499)
    finally:
        ticket.release()
    answer = _answer(state, body, served, request_id, created, finals, prompt_ids, tools.parse)
    trace.answered(answer)
    return JSONResponse(answer)


def _answer(
    state: ServerState, body: ChatCompletionRequest, served: str, request_id: str, created: int,
    finals: dict[int, RequestOutput], prompt_ids: list[list[int]], parse_tools: bool,
) -> dict:  # fmt: skip
    """The whole answer from each choice's final output (also what the request log keeps of a stream)."""
    k = (body.top_logprobs or 0) if body.logprobs else None
    result = []
    for index in sorted(finals):
        output = finals[index]
        message: dict = {"role": "assistant", "content": output.text}
        finish_reason = output.finish_reason
        if parse_tools:
            message["content"], calls = parse_tool_calls(output.text)
            if calls:
                message["tool_calls"] = calls
                finish_reason = "tool_calls" if finish_reason == "stop" else finish_reason
        result.append({
            "index": index, "message": message,
            "logprobs": chat_logprobs(state.engine.tokenizer, output, 0, k) if k is not None else None,
            "finish_reason": finish_reason, "stop_reason": output.stop_reason,
        })  # fmt: skip
    answer = {
        "id": request_id, "object": "chat.completion", "created": created, "model": served,
        "choices": result, "usage": usage(prompt_ids, finals, body.n), "system_fingerprint": None,
    }  # fmt: skip
    if body.prompt_logprobs is not None and finals:  # one prompt: every choice scored it the same
        answer["prompt_logprobs"] = prompt_logprobs(state.engine.tokenizer, finals[min(finals)])
    return answer


async def _events(
    state: ServerState, body: ChatCompletionRequest, served: str, request_id: str, created: int,
    choices: AsyncIterator[tuple[int, RequestOutput]], prompt_ids: list[list[int]], parse_tools: bool,
    trace: RequestTrace | Untraced,
) -> AsyncIterator[str]:  # fmt: skip
    stream_usage = StreamUsage(prompt_ids, body.n, body.stream_options)
    tool_streams: dict[int, ToolCallStream] = {}
    k = (body.top_logprobs or 0) if body.logprobs else None
    base = {"id": request_id, "object": "chat.completion.chunk", "created": created, "model": served}
    started: set[int] = set()
    try:
        async for index, output in choices:
            if index not in started:  # the role goes with the first token, as vLLM sends it: clients time TTFT by it
                started.add(index)
                role = {
                    "index": index,
                    "delta": {"role": "assistant", "content": ""},
                    "logprobs": None,
                    "finish_reason": None,
                }
                yield sse({**base, "choices": [role]})
            start = len(output.token_ids) - len(output.delta_token_ids)
            text, calls, finish_reason = output.delta_text, [], output.finish_reason
            if parse_tools:
                tools = tool_streams.setdefault(index, ToolCallStream())
                text, calls = tools.push(output.delta_text, output.finished)
                if tools.calls and finish_reason == "stop":
                    finish_reason = "tool_calls"
            if not (text or calls or output.finished or (k is not None and output.delta_token_ids)):
                continue
            delta: dict = {"content": text} if text or not (output.finished or calls) else {}
            if calls:
                delta["tool_calls"] = calls
            choice = {
                "index": index, "delta": delta,
                "logprobs": chat_logprobs(state.engine.tokenizer, output, start, k) if k is not None else None,
                "finish_reason": finish_reason, "stop_reason": output.stop_reason,
            }  # fmt: skip
            yield sse(stream_usage.chunk(base, choice, index, output))
        trace.answered(
            lambda: _answer(state, body, served, request_id, created, stream_usage.finals, prompt_ids, parse_tools)
        )
        last = stream_usage.last_chunk(base)
        if last is not None:
            yield sse(last)
    except Exception as error:
        yield json_error_event(error)
    yield DONE
