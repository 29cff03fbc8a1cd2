"""Structured outputs over HTTP through the openai client: OpenAI's response_format and vLLM's
structured_outputs and guided_* extras, streamed and not, and the 400s for what cannot compile."""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest

from .conftest import MODEL_NAME

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 8},
        "age": {"type": "integer", "minimum": 0, "maximum": 99},
        "role": {"enum": ["admin", "user"]},
    },
    "required": ["name", "age", "role"],
    "additionalProperties": False,
}
MESSAGES = [{"role": "user", "content": "Describe a person as JSON."}]


@pytest.fixture()
def client(server):
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=60) as c:
        yield c


@pytest.mark.parametrize("stream", [False, True])
def test_response_format_json_schema_is_followed(client, stream) -> None:
    response_format = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}
    for seed in range(4):
        answer = client.chat.completions.create(
            model=MODEL_NAME, messages=MESSAGES, max_completion_tokens=64, temperature=1.0, seed=seed,
            response_format=response_format, stream=stream,
        )  # fmt: skip
        if stream:
            chunks = [chunk.choices[0] for chunk in answer if chunk.choices]
            text, finish = "".join(c.delta.content or "" for c in chunks), chunks[-1].finish_reason
        else:
            text, finish = answer.choices[0].message.content, answer.choices[0].finish_reason
        assert finish == "stop"  # the object closed: the grammar ended the request
        jsonschema.validate(json.loads(text), PERSON)


def test_json_object_and_vllm_extras_on_completions(client) -> None:
    anything = client.completions.create(  # the client's completions take response_format as an extra
        model=MODEL_NAME, prompt="{", max_tokens=64, temperature=1.0, seed=1,
        extra_body={"response_format": {"type": "json_object"}},
    )  # fmt: skip
    assert isinstance(json.loads(anything.choices[0].text), dict)
    choices = ["red", "green", "light blue"]
    for extra in ({"guided_choice": choices}, {"structured_outputs": {"choice": choices}}):
        picked = client.completions.create(model=MODEL_NAME, prompt="Color:", max_tokens=8, extra_body=extra)
        assert picked.choices[0].text in choices and picked.choices[0].finish_reason == "stop"
    for extra in ({"guided_regex": "[0-9]{3}-[a-z]{2}"}, {"structured_outputs": {"regex": "[0-9]{3}-[a-z]{2}"}}):
        code = client.completions.create(model=MODEL_NAME, prompt="Code:", max_tokens=16, extra_body=extra)
        text = code.choices[0].text
        assert len(text) == 6 and text[:3].isdigit() and text[3] == "-" and text[4:].isalpha(), text
    lark = 'start: "x=" NUMBER\nNUMBER: /[1-9][0-9]?/'
    grammar = client.completions.create(
        model=MODEL_NAME, prompt="Set:", max_tokens=16, extra_body={"guided_grammar": lark}
    )
    assert grammar.choices[0].text.startswith("x=") and grammar.choices[0].text[2:].isdigit()


def test_a_finish_by_length_leaves_the_stream_well_formed(http) -> None:
    body = {
        "model": MODEL_NAME, "prompt": "Data:", "max_tokens": 3, "stream": True, "temperature": 1.0, "seed": 0,
        "guided_json": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
    }  # fmt: skip
    with http.stream("POST", "/v1/completions", json=body) as response:
        events = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert "".join(chunk["choices"][0]["text"] for chunk in chunks).startswith("{")


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "bogus"}}}},
         "response_format"),
        ({"guided_regex": "[unclosed"}, "guided_regex"),
        ({"structured_outputs": {"grammar": "start: undefined_rule"}}, "structured_outputs.grammar"),
        ({"guided_choice": []}, "guided_choice"),
        ({"guided_json": "{not json"}, "guided_json"),
        ({"guided_regex": "a+", "response_format": {"type": "json_object"}}, "guided_regex"),
    ],
)  # fmt: skip
def test_a_constraint_that_cannot_compile_is_a_400_naming_it(http, extra, param) -> None:
    response = http.post("/v1/completions", json={"model": MODEL_NAME, "prompt": "x", "max_tokens": 4, **extra})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
