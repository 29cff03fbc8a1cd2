"""Tool calls through the official openai client: tools rendered by the chat template, calls
forced by tool_choice (required, a named function) parsed into OpenAI's tool_calls, streamed
and not, and a conversation that sends the tool's result back."""

from __future__ import annotations

import json

import httpx
import jsonschema
import openai
import pytest

from tokenworks.serve.tool_calls import ToolCallStream, parse_tool_calls

from .conftest import MODEL_NAME, start_server

WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 12}, "unit": {"enum": ["celsius", "fahrenheit"]}},
    "required": ["city", "unit"],
    "additionalProperties": False,
}
TIME = {
    "type": "object",
    "properties": {"zone": {"enum": ["UTC", "CET", "PST"]}},
    "required": ["zone"],
    "additionalProperties": False,
}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "The weather now.", "parameters": WEATHER}},
    {"type": "function", "function": {"name": "get_time", "description": "The time now.", "parameters": TIME}},
]
SCHEMAS = {"get_weather": WEATHER, "get_time": TIME}
BOGUS_TOOLS = [{"type": "function", "function": {"name": "f", "parameters": {"type": "bogus"}}}]
STRICT_TOOLS = [{"type": "function", "function": {"name": "f", "parameters": TIME, "strict": True}}]
MESSAGES = [{"role": "user", "content": "What is the weather in Oslo?"}]


@pytest.fixture(scope="module")
def tool_server(serve_model_dir):
    """A server with room for the tools' signatures in the prompt (the main one holds 256 tokens)."""
    running = start_server(serve_model_dir, engine_options={"max_model_len": 1024, "kv_cache_memory_gib": 0.1})
    yield running
    running.stop()


@pytest.fixture()
def client(tool_server):
    with openai.OpenAI(base_url=f"{tool_server.url}/v1", api_key="unused", max_retries=0, timeout=60) as c:
        yield c


@pytest.fixture()
def http(tool_server):
    with httpx.Client(base_url=tool_server.url, timeout=60) as c:
        yield c


def collect_stream(stream) -> tuple[str, list[dict], str]:
    """Content, tool calls (deltas accumulated as OpenAI's clients do) and the finish reason."""
    content, calls, finish = "", {}, None
    for chunk in stream:
        if not chunk.choices:
            continue
        choice = chunk.choices[0]
        content += choice.delta.content or ""
        for delta in choice.delta.tool_calls or []:
            call = calls.setdefault(delta.index, {"id": None, "name": "", "arguments": ""})
            call["id"] = delta.id or call["id"]
            call["name"] += delta.function.name or ""
            call["arguments"] += delta.function.arguments or ""
        finish = choice.finish_reason or finish
    return content, [calls[i] for i in sorted(calls)], finish


@pytest.mark.parametrize("stream", [False, True])
def test_required_and_named_tool_calls_parse_and_validate(client, stream) -> None:
    for tool_choice, expected_names in (
        ("required", {"get_weather", "get_time"}),
        ({"type": "function", "function": {"name": "get_time"}}, {"get_time"}),
    ):
        for seed in range(3):
            answer = client.chat.completions.create(
                model=MODEL_NAME, messages=MESSAGES, tools=TOOLS, tool_choice=tool_choice, temperature=1.0,
                seed=seed, max_completion_tokens=96, stream=stream, parallel_tool_calls=False,
            )  # fmt: skip
            if stream:
                content, calls, finish = collect_stream(answer)
            else:
                message = answer.choices[0].message
                content, finish = message.content, answer.choices[0].finish_reason
                calls = [{"id": c.id, "name": c.function.name, "arguments": c.function.arguments}
                         for c in message.tool_calls]  # fmt: skip
            assert finish == "tool_calls" and not content
            assert len(calls) == 1 and calls[0]["id"].startswith("call_")
            assert calls[0]["name"] in expected_names
            jsonschema.validate(json.loads(calls[0]["arguments"]), SCHEMAS[calls[0]["name"]])


def test_a_conversation_sends_the_result_back(client, http) -> None:
    first = client.chat.completions.create(
        model=MODEL_NAME, messages=MESSAGES, tools=TOOLS, tool_choice="required", max_completion_tokens=96
    )
    call = first.choices[0].message.tool_calls[0]
    history = [
        *MESSAGES,
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": '{"celsius": 3}'},
    ]
    answer = client.chat.completions.create(
        model=MODEL_NAME, messages=history, tools=TOOLS, tool_choice="none", max_completion_tokens=4,
        extra_body={"ignore_eos": True},
    )  # fmt: skip
    assert answer.choices[0].finish_reason == "length" and answer.choices[0].message.tool_calls is None
    # The prompt held the call and its result, in the template's format.
    tokens = http.post("/tokenize", json={"messages": history}).json()["tokens"]
    text = http.post("/detokenize", json={"tokens": tokens}).json()["prompt"]
    expected_call = (
        f'<tool_call>\n{{"name": "{call.function.name}", "arguments": {call.function.arguments}}}\n</tool_call>'
    )
    assert f"<|im_start|>assistant\n{expected_call}<|im_end|>" in text
    assert '<|im_start|>tool\n<tool_response>\n{"celsius": 3}\n</tool_response><|im_end|>' in text


def test_auto_leaves_plain_text_as_content() -> None:
    assert parse_tool_calls("Hello there") == ("Hello there", [])
    content, calls = parse_tool_calls('Let me look.\n<tool_call>\n{"name": "f", "arguments": {"a": 1}}\n</tool_call>')
    assert content == "Let me look." and [c["function"] for c in calls] == [{"name": "f", "arguments": '{"a": 1}'}]
    assert parse_tool_calls("<tool_call>\nnot json\n</tool_call>")[1] == []  # malformed: stays content
    two = '<tool_call>\n{"name": "f", "arguments": {}}\n</tool_call>\n<tool_call>\n{"name": "g", "arguments": {"x": [1]}}\n</tool_call>'
    content, calls = parse_tool_calls(two)
    assert content is None and [c["function"]["name"] for c in calls] == ["f", "g"]
    assert len({c["id"] for c in calls}) == 2


def test_the_stream_parser_holds_back_a_tag_split_across_deltas() -> None:
    stream, sent, calls = ToolCallStream(), [], []
    for delta in ["Sure", ". <tool", '_call>\n{"name": "f", ', '"arguments": {}}\n</tool_', "call>"]:
        content, new = stream.push(delta, finished=False)
        sent.append(content)
        calls += new
    assert "".join(sent) == "Sure. " and sent[1] == ". "  # "<tool" was held back, never sent as text
    assert [(c["index"], c["function"]["name"], c["function"]["arguments"]) for c in calls] == [(0, "f", "{}")]
    cut = ToolCallStream()  # an answer that ends inside its only call: the text is content after all
    assert cut.push("Hi <tool_call>\n{", finished=False) == ("Hi ", [])
    assert cut.push('"name"', finished=True) == ('<tool_call>\n{"name"', [])


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"tool_choice": "required"}, "tool_choice"),  # no tools
        ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
        ({"tools": TOOLS, "tool_choice": "required", "response_format": {"type": "json_object"}}, "tool_choice"),
        ({"tools": BOGUS_TOOLS, "tool_choice": "required"}, "tools"),
        ({"tools": STRICT_TOOLS, "tool_choice": "auto"}, "tool_choice"),  # strict cannot be enforced there
    ],
)
def test_tool_requests_that_cannot_be_answered_are_400s(http, extra, param) -> None:
    response = http.post("/v1/chat/completions", json={"model": MODEL_NAME, "messages": MESSAGES, **extra})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
