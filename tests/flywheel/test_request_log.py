"""The request log of a real server (--log-db): rows of streamed and plain requests, chat and
completions, failures, workload ids, logprobs, and POST /v1/feedback, through the official client."""

from __future__ import annotations

import json
import sqlite3

import httpx
import pytest
from openai import OpenAI

from ..serve.conftest import MODEL_NAME, serve_model_dir, start_server  # noqa: F401 (a fixture)

# Long enough that nothing commits on its own during the tests: every row read here was
# committed by a flush or feedback command, and feedback finds rows still in the queue.
FLUSH_INTERVAL_S = 60.0


@pytest.fixture(scope="module")
def logged(serve_model_dir, tmp_path_factory):  # noqa: F811
    db = tmp_path_factory.mktemp("log") / "requests.db"
    server = start_server(serve_model_dir, log_db=db, log_flush_interval=FLUSH_INTERVAL_S)
    yield server, db
    server.stop()


@pytest.fixture(scope="module")
def client(logged) -> OpenAI:
    return OpenAI(base_url=logged[0].url + "/v1", api_key="unused", max_retries=0)


def rows(logged) -> dict[str, dict]:
    server, db = logged
    server.state.request_log.flush().result(10)
    with sqlite3.connect(db) as connection:
        connection.row_factory = sqlite3.Row
        return {row["request_id"]: dict(row) for row in connection.execute("SELECT * FROM requests")}


def test_a_plain_completion_is_logged_with_its_usage_times_and_payloads(logged, client) -> None:
    answer = client.completions.create(
        model=MODEL_NAME, prompt="A list is", max_tokens=8, temperature=0, extra_headers={"X-Workload-ID": "docs-qa"}
    )
    row = rows(logged)[answer.id]
    assert (row["endpoint"], row["status"], row["http_status"], row["error"]) == ("completions", "ok", 200, None)
    assert (row["model"], row["served_model"], row["adapter"], row["workload_id"]) == (
        MODEL_NAME, MODEL_NAME, None, "docs-qa",
    )  # fmt: skip
    assert (row["prompt_tokens"], row["completion_tokens"], row["cached_tokens"]) == (
        answer.usage.prompt_tokens, answer.usage.completion_tokens, answer.usage.prompt_tokens_details.cached_tokens,
    )  # fmt: skip
    assert row["completion_tokens"] == 8
    assert json.loads(row["finish_reasons"]) == ["length"]
    assert json.loads(row["request_json"]) == {"model": MODEL_NAME, "prompt": "A list is", "max_tokens": 8,
                                               "temperature": 0.0}  # fmt: skip
    assert json.loads(row["response_json"]) == answer.model_dump(exclude_unset=True)
    assert 0 < row["ttft_s"] <= row["e2e_s"] and row["tpot_s"] > 0
    assert row["min_logprob"] <= row["mean_logprob"] < 0


def test_a_stream_is_logged_as_the_answer_a_plain_call_returns(logged, client) -> None:
    messages = [{"role": "user", "content": "What is a tuple?"}]
    chunks = list(
        client.chat.completions.create(
            model=MODEL_NAME, messages=messages, max_completion_tokens=6, temperature=0, user="alice", stream=True,
            stream_options={"include_usage": True},
        )
    )  # fmt: skip
    streamed_text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    usage = chunks[-1].usage
    plain = client.chat.completions.create(model=MODEL_NAME, messages=messages, max_completion_tokens=6, temperature=0)
    logged_rows = rows(logged)
    row = logged_rows[chunks[0].id]
    assert (row["endpoint"], row["workload_id"], row["status"]) == ("chat.completions", "alice", "ok")
    assert (row["prompt_tokens"], row["completion_tokens"]) == (usage.prompt_tokens, usage.completion_tokens)
    response = json.loads(row["response_json"])
    assert response["object"] == "chat.completion"
    assert response["choices"] == [
        {"index": 0, "message": {"role": "assistant", "content": streamed_text}, "logprobs": None,
         "finish_reason": "length", "stop_reason": None},
    ]  # fmt: skip
    assert response["choices"] == json.loads(logged_rows[plain.id]["response_json"])["choices"]
    assert json.loads(row["request_json"])["stream"] is True


def test_the_logged_logprobs_are_the_sampled_tokens_own(logged, client) -> None:
    answer = client.completions.create(model=MODEL_NAME, prompt="The Python", max_tokens=6, temperature=0, logprobs=0)
    expected = answer.choices[0].logprobs.token_logprobs
    row = rows(logged)[answer.id]
    assert row["mean_logprob"] == pytest.approx(sum(expected) / len(expected), abs=1e-5)
    assert row["min_logprob"] == pytest.approx(min(expected), abs=1e-5)


def test_a_batch_of_prompts_and_choices_is_one_row(logged, client) -> None:
    answer = client.completions.create(
        model=MODEL_NAME, prompt=["A list", "A dict"], n=2, max_tokens=3, temperature=0.7, seed=1
    )
    row = rows(logged)[answer.id]
    assert row["completion_tokens"] == answer.usage.completion_tokens == 12
    assert json.loads(row["finish_reasons"]) == ["length"] * 4


def test_a_refused_request_is_logged_as_an_error_with_its_message(logged) -> None:
    server, _ = logged
    body = {"model": MODEL_NAME, "prompt": "x", "max_tokens": 4, "suffix": "!", "user": "bob"}
    response = httpx.post(f"{server.url}/v1/completions", json=body)
    assert response.status_code == 400
    errors = [row for row in rows(logged).values() if row["workload_id"] == "bob"]
    assert len(errors) == 1
    (row,) = errors
    assert (row["status"], row["http_status"], row["error"]) == ("error", 400, "suffix is not supported")
    assert row["request_id"].startswith("cmpl-") and row["response_json"] is None
    assert json.loads(row["request_json"]) == body


def test_an_unknown_model_is_logged_as_a_404(logged) -> None:
    server, _ = logged
    body = {"model": "nope", "messages": [{"role": "user", "content": "hi"}], "user": "carol"}
    assert httpx.post(f"{server.url}/v1/chat/completions", json=body).status_code == 404
    (row,) = [row for row in rows(logged).values() if row["workload_id"] == "carol"]
    assert (row["endpoint"], row["http_status"], row["model"]) == ("chat.completions", 404, "nope")
    assert row["request_id"].startswith("chatcmpl-")


# ---- POST /v1/feedback --------------------------------------------------------------------


def test_feedback_on_an_answer_still_in_the_writers_queue_is_stored(logged, client) -> None:
    server, db = logged
    answer = client.completions.create(model=MODEL_NAME, prompt="A set is", max_tokens=4, temperature=0)
    body = {"request_id": answer.id, "rating": -1, "correction": "an unordered collection"}
    response = httpx.post(f"{server.url}/v1/feedback", json=body)  # no flush in between: the row is queued
    assert response.status_code == 200, response.text
    stored = response.json()
    assert {key: stored[key] for key in ("object", "request_id", "rating", "correction")} == {
        "object": "feedback", "request_id": answer.id, "rating": -1.0, "correction": "an unordered collection",
    }  # fmt: skip
    with sqlite3.connect(db) as connection:
        assert connection.execute("SELECT request_id, rating, correction FROM feedback WHERE id = ?",
                                  (stored["id"],)).fetchall() == [(answer.id, -1.0, "an unordered collection")]  # fmt: skip
    rated = httpx.post(f"{server.url}/v1/feedback", json={"request_id": answer.id, "rating": 4.5})
    assert rated.status_code == 200 and rated.json()["correction"] is None and rated.json()["id"] == stored["id"] + 1


def test_feedback_for_an_unknown_request_is_a_404(logged) -> None:
    response = httpx.post(f"{logged[0].url}/v1/feedback", json={"request_id": "cmpl-nope", "rating": 1})
    assert response.status_code == 404
    assert response.json()["error"] == {
        "message": "no request with id 'cmpl-nope' in the request log", "type": "not_found_error",
        "param": "request_id", "code": "request_not_found",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"request_id": "cmpl-1", "rating": 1, "comment": "x"}, "comment"),
        ({"request_id": "cmpl-1", "rating": "good"}, "rating.int"),
        ({"request_id": "cmpl-1", "correction": 3}, "correction"),
        ({"rating": 1}, "request_id"),
        ({"request_id": "cmpl-1"}, None),
        ([1, 2], None),
    ],
)
def test_malformed_feedback_is_a_400_naming_the_field(logged, body, param) -> None:
    response = httpx.post(f"{logged[0].url}/v1/feedback", json=body)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_feedback_that_is_not_json_is_a_400(logged) -> None:
    response = httpx.post(
        f"{logged[0].url}/v1/feedback", content=b"{rating", headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["error"]["message"].startswith("the request body is not valid JSON")
