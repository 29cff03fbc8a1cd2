"""The official `openai` client against a live server: completions, chat, streaming, n, stops, logprobs."""

from __future__ import annotations

import openai
import pytest

from .conftest import MAX_MODEL_LEN, MODEL_NAME


@pytest.fixture()
def client(server):
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=60) as c:
        yield c


def tokens_of(http, text: str) -> list[int]:
    return http.post("/tokenize", json={"prompt": text}).json()["tokens"]


def test_models_and_health(client, http) -> None:
    models = client.models.list().data
    assert [m.id for m in models] == [MODEL_NAME]
    assert http.get("/health").status_code == 200


def test_completion_counts_tokens_exactly(client, http) -> None:
    prompt = "The Python language reference"
    result = client.completions.create(
        model=MODEL_NAME, prompt=prompt, max_tokens=7, temperature=0, extra_body={"ignore_eos": True}
    )
    assert result.object == "text_completion" and len(result.choices) == 1
    assert result.choices[0].finish_reason == "length"
    assert result.usage.prompt_tokens == len(tokens_of(http, prompt))
    assert result.usage.completion_tokens == 7
    assert result.usage.total_tokens == result.usage.prompt_tokens + 7
    again = client.completions.create(
        model=MODEL_NAME, prompt=prompt, max_tokens=7, temperature=0, extra_body={"ignore_eos": True}
    )
    assert again.choices[0].text == result.choices[0].text  # greedy is deterministic


def test_chat_goes_through_the_chat_template(client, http) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is a list?"}]
    result = client.chat.completions.create(
        model=MODEL_NAME, messages=messages, max_completion_tokens=6, temperature=0, extra_body={"ignore_eos": True}
    )
    choice = result.choices[0]
    assert result.object == "chat.completion" and choice.message.role == "assistant"
    assert choice.finish_reason == "length" and result.usage.completion_tokens == 6
    templated = http.post("/tokenize", json={"messages": messages}).json()
    assert result.usage.prompt_tokens == templated["count"]


@pytest.mark.parametrize("api", ["completions", "chat"])
def test_streaming_with_usage_matches_the_tokens(client, http, api) -> None:
    prompt = "Return the list of"
    common = dict(model=MODEL_NAME, stream=True, stream_options={"include_usage": True}, temperature=0.8, seed=3)
    if api == "completions":
        stream = client.completions.create(prompt=prompt, max_tokens=12, extra_body={"ignore_eos": True}, **common)
        prompt_tokens = len(tokens_of(http, prompt))
    else:
        messages = [{"role": "user", "content": prompt}]
        stream = client.chat.completions.create(
            messages=messages, max_completion_tokens=12, extra_body={"ignore_eos": True}, **common
        )
        prompt_tokens = http.post("/tokenize", json={"messages": messages}).json()["count"]
    chunks = list(stream)
    usage_chunks = [c for c in chunks if c.usage is not None]
    assert len(usage_chunks) == 1 and chunks[-1] is usage_chunks[0] and chunks[-1].choices == []
    usage = usage_chunks[0].usage
    assert usage.prompt_tokens == prompt_tokens and usage.completion_tokens == 12
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["length"]
    pieces = [
        c.choices[0].text if api == "completions" else c.choices[0].delta.content or "" for c in chunks if c.choices
    ]
    assert "".join(pieces)  # some text arrived


def test_n_2_gives_two_choices_and_counts_both(client) -> None:
    result = client.completions.create(
        model=MODEL_NAME, prompt="Hello", n=2, max_tokens=5, temperature=1.0, seed=7, extra_body={"ignore_eos": True}
    )
    assert sorted(c.index for c in result.choices) == [0, 1]
    assert result.usage.completion_tokens == 10
    chat = client.chat.completions.create(
        model=MODEL_NAME, messages=[{"role": "user", "content": "hi"}], n=2, max_tokens=4, stream=True,
        stream_options={"include_usage": True}, extra_body={"ignore_eos": True},
    )  # fmt: skip
    chunks = list(chat)
    finished = {c.choices[0].index for c in chunks if c.choices and c.choices[0].finish_reason == "length"}
    assert finished == {0, 1} and chunks[-1].usage.completion_tokens == 8


def test_stop_string_ends_the_text(client) -> None:
    free = client.completions.create(
        model=MODEL_NAME, prompt="Hello", max_tokens=24, temperature=0, extra_body={"ignore_eos": True}
    )
    text = free.choices[0].text
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    assert stop.strip(), text
    stopped = client.completions.create(model=MODEL_NAME, prompt="Hello", max_tokens=24, temperature=0, stop=[stop])
    choice = stopped.choices[0]
    assert choice.finish_reason == "stop" and stop not in choice.text
    assert text.startswith(choice.text)
    streamed = client.completions.create(
        model=MODEL_NAME, prompt="Hello", max_tokens=24, temperature=0, stop=stop, stream=True
    )
    chunks = list(streamed)
    assert "".join(c.choices[0].text for c in chunks) == choice.text
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_logprobs(client) -> None:
    chat = client.chat.completions.create(
        model=MODEL_NAME, messages=[{"role": "user", "content": "hi"}], max_tokens=5, logprobs=True, top_logprobs=3,
        extra_body={"ignore_eos": True},
    )  # fmt: skip
    content = chat.choices[0].logprobs.content
    assert len(content) == 5
    for entry in content:
        assert len(entry.top_logprobs) == 3 and entry.logprob <= 0
        values = [top.logprob for top in entry.top_logprobs]
        assert values == sorted(values, reverse=True) and entry.logprob <= values[0] + 1e-6
    legacy = client.completions.create(
        model=MODEL_NAME, prompt="Hello", max_tokens=4, logprobs=2, extra_body={"ignore_eos": True}
    )
    logprobs = legacy.choices[0].logprobs
    assert len(logprobs.tokens) == len(logprobs.token_logprobs) == len(logprobs.top_logprobs) == 4
    assert "".join(logprobs.tokens) == legacy.choices[0].text or "\ufffd" in legacy.choices[0].text


def test_max_completion_tokens_wins_over_max_tokens(client) -> None:
    result = client.chat.completions.create(
        model=MODEL_NAME, messages=[{"role": "user", "content": "hi"}], max_tokens=9, max_completion_tokens=3,
        extra_body={"ignore_eos": True},
    )  # fmt: skip
    assert result.usage.completion_tokens == 3 and result.choices[0].finish_reason == "length"


def test_vllm_extra_parameters_are_accepted(client) -> None:
    result = client.completions.create(
        model=MODEL_NAME, prompt="Hello", max_tokens=6,
        extra_body={"ignore_eos": True, "min_tokens": 6, "top_k": 5, "min_p": 0.05, "repetition_penalty": 1.2},
    )  # fmt: skip
    assert result.usage.completion_tokens == 6


def test_tokenize_detokenize_round_trip(http) -> None:
    text = "def main():\n    return [1, 2, 3]"
    tokenized = http.post("/tokenize", json={"prompt": text, "model": MODEL_NAME}).json()
    assert tokenized["count"] == len(tokenized["tokens"]) and tokenized["max_model_len"] == MAX_MODEL_LEN
    assert http.post("/detokenize", json={"tokens": tokenized["tokens"]}).json() == {"prompt": text}
