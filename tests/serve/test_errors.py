"""Bad input gets OpenAI's error object with the right status and a message that says what to change."""

from __future__ import annotations

import openai
import pytest

from .conftest import MAX_BODY_BYTES, MAX_MODEL_LEN, MODEL_NAME


def assert_error(response, status: int, *words: str) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    for word in words:
        assert word in error["message"], error["message"]
    return error


def test_unknown_model_is_404(http, server) -> None:
    error = assert_error(
        http.post("/v1/completions", json={"model": "gpt-5", "prompt": "hi"}), 404, "gpt-5", MODEL_NAME
    )
    assert error["code"] == "model_not_found"
    with (
        openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0) as client,
        pytest.raises(openai.NotFoundError),
    ):
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])


def test_prompt_beyond_the_context_states_the_lengths(http) -> None:
    response = http.post("/v1/completions", json={"prompt": [5] * 20, "max_tokens": MAX_MODEL_LEN})
    assert_error(response, 400, "20 tokens", str(MAX_MODEL_LEN), str(20 + MAX_MODEL_LEN))
    long_prompt = [5] * (MAX_MODEL_LEN + 3)
    assert_error(
        http.post("/v1/completions", json={"prompt": long_prompt, "stream": True}), 400, str(MAX_MODEL_LEN + 3)
    )


@pytest.mark.parametrize(
    ("field", "value"),
    [("temperature", -1), ("top_p", 0), ("top_p", 1.5), ("min_p", 2), ("presence_penalty", 3), ("n", 0),
     ("max_tokens", 0), ("logprobs", 21), ("top_k", -2), ("repetition_penalty", 0), ("stop", [""]), ("min_tokens", 99)],
)  # fmt: skip
def test_invalid_sampling_values_are_400_naming_the_field(http, field, value) -> None:
    body = {"prompt": "hi", "max_tokens": 8, field: value}
    error = assert_error(http.post("/v1/completions", json=body), 400)
    assert field in error["message"] or error["param"] == field


@pytest.mark.parametrize(
    ("path", "field", "value"),
    [("/v1/completions", "logit_bias", {"5": 10}), ("/v1/chat/completions", "prediction", {"type": "content", "content": "x"}),
     ("/v1/chat/completions", "functions", [{"name": "f"}]),
     ("/v1/chat/completions", "audio", {"voice": "alloy"}), ("/v1/chat/completions", "modalities", ["text", "audio"]),
     ("/v1/completions", "frobnicate", True)],
)  # fmt: skip
def test_a_field_the_server_does_not_implement_is_a_400_naming_it(http, path, field, value) -> None:
    body = {"prompt": "hi"} if path == "/v1/completions" else {"messages": [{"role": "user", "content": "hi"}]}
    error = assert_error(http.post(path, json={**body, "max_tokens": 2, field: value}), 400, field, "not supported")
    assert error["param"] == field
    nested = {**body, "stream": True, "stream_options": {"include_usage": True, "obfuscate": True}}
    assert assert_error(http.post(path, json=nested), 400, "not supported")["param"] == "stream_options.obfuscate"


def test_best_of_other_than_n_is_a_400(http) -> None:
    assert_error(http.post("/v1/completions", json={"prompt": "hi", "max_tokens": 2, "best_of": 3}), 400, "best_of")
    answer = http.post("/v1/completions", json={"prompt": "hi", "max_tokens": 2, "best_of": 2, "n": 2})
    assert answer.status_code == 200 and len(answer.json()["choices"]) == 2


def test_malformed_json_and_wrong_types_are_400(http) -> None:
    bad_json = http.post("/v1/completions", content=b'{"prompt": "hi",', headers={"content-type": "application/json"})
    assert_error(bad_json, 400, "JSON")
    assert_error(http.post("/v1/completions", json={"prompt": {"a": 1}}), 400, "prompt")
    assert_error(http.post("/v1/completions", json={"prompt": "hi", "max_tokens": "many"}), 400, "max_tokens")
    assert_error(http.post("/v1/chat/completions", json={"messages": []}), 400, "messages")
    assert_error(http.post("/v1/chat/completions", json={"messages": [{"role": "robot", "content": "x"}]}), 400, "role")
    assert_error(http.post("/v1/completions", json={"prompt": [10**9]}), 400, "token ids")
    assert_error(http.post("/v1/completions", content=b"[1, 2]", headers={"content-type": "application/json"}), 400)


def test_unknown_route_and_method_answer_with_the_error_object(http) -> None:
    assert_error(http.get("/v1/nothing"), 404, "/v1/nothing")
    assert_error(http.get("/v1/completions"), 405, "GET")


def test_body_over_the_limit_is_413(http) -> None:
    big = {"prompt": "x" * (MAX_BODY_BYTES + 10)}
    assert_error(http.post("/v1/completions", json=big), 413, str(MAX_BODY_BYTES))

    def chunks():  # no Content-Length: refused while reading
        for _ in range(MAX_BODY_BYTES // 1024 + 8):
            yield b" " * 1024

    response = http.post("/v1/completions", content=chunks(), headers={"content-type": "application/json"})
    assert_error(response, 413)
