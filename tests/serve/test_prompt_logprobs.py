"""Prompt logprobs over HTTP: echo with logprobs, max_tokens 0, and vLLM's prompt_logprobs,
each equal to transformers' log-softmax over the served checkpoint."""

from __future__ import annotations

import openai
import pytest
import torch
from transformers import AutoModelForCausalLM

from .conftest import MODEL_NAME

TOLERANCE = 1e-4
PROMPT = [5, 17, 203, 44, 9, 310, 77, 12, 150, 61, 3, 88]
MESSAGES = [{"role": "user", "content": "x"}]


@pytest.fixture()
def client(server):
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def reference(serve_model_dir):
    """(len - 1, V) log-softmax: row i is transformers' distribution of PROMPT[i + 1]."""
    model = AutoModelForCausalLM.from_pretrained(serve_model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        return torch.log_softmax(model(torch.tensor([PROMPT])).logits[0, :-1], dim=-1)


def decoded(http, ids: list[int]) -> list[str]:
    return [http.post("/detokenize", json={"tokens": [token]}).json()["prompt"] for token in ids]


def test_echo_with_logprobs_scores_the_prompt(client, http, reference) -> None:
    result = client.completions.create(
        model=MODEL_NAME, prompt=PROMPT, max_tokens=3, temperature=0, echo=True, logprobs=2,
        extra_body={"ignore_eos": True},
    )  # fmt: skip
    choice = result.choices[0]
    logprobs = choice.logprobs
    assert len(logprobs.tokens) == len(PROMPT) + 3
    prompt_text = http.post("/detokenize", json={"tokens": PROMPT}).json()["prompt"]
    assert choice.text.startswith(prompt_text) and logprobs.tokens[: len(PROMPT)] == decoded(http, PROMPT)
    assert logprobs.token_logprobs[0] is None and logprobs.top_logprobs[0] is None
    for position, value in enumerate(logprobs.token_logprobs[1 : len(PROMPT)]):
        assert value == pytest.approx(float(reference[position, PROMPT[position + 1]]), abs=TOLERANCE)
        # Keyed by text: the likeliest token's text carries its logprob (tokens may share a text).
        top = logprobs.top_logprobs[position + 1]
        best = reference[position].topk(2)
        assert top[decoded(http, [best.indices[0].item()])[0]] == pytest.approx(best.values[0].item(), abs=TOLERANCE)
        assert max(top.values()) == pytest.approx(best.values[0].item(), abs=TOLERANCE)
    # Offsets run through the prompt's tokens and on into the output's.
    lengths = [len(token) for token in logprobs.tokens]
    assert logprobs.text_offset == [sum(lengths[:i]) for i in range(len(lengths))]
    assert result.usage.prompt_tokens == len(PROMPT) and result.usage.completion_tokens == 3
    streamed = client.completions.create(
        model=MODEL_NAME, prompt=PROMPT, max_tokens=3, temperature=0, echo=True, logprobs=2, stream=True,
        extra_body={"ignore_eos": True},
    )  # fmt: skip
    chunks = [chunk.choices[0] for chunk in streamed if chunk.choices]
    assert "".join(chunk.text for chunk in chunks) == choice.text
    joined = {key: [] for key in ("tokens", "token_logprobs", "top_logprobs", "text_offset")}
    for chunk in chunks:
        if chunk.logprobs is not None:
            for key in joined:
                joined[key] += getattr(chunk.logprobs, key)
    assert joined == {key: getattr(logprobs, key) for key in joined}


@pytest.mark.parametrize("stream", [False, True])
def test_max_tokens_0_with_echo_is_the_prompt_alone(client, http, reference, stream) -> None:
    prompt_text = http.post("/detokenize", json={"tokens": PROMPT}).json()["prompt"]
    answer = client.completions.create(
        model=MODEL_NAME, prompt=PROMPT, max_tokens=0, echo=True, logprobs=0, stream=stream,
        **({"stream_options": {"include_usage": True}} if stream else {}),
    )  # fmt: skip
    if stream:
        chunks = list(answer)
        choices = [chunk.choices[0] for chunk in chunks if chunk.choices]
        text, finish = "".join(c.text for c in choices), choices[-1].finish_reason
        token_logprobs = [v for c in choices if c.logprobs for v in c.logprobs.token_logprobs]
        usage = chunks[-1].usage
    else:
        choice = answer.choices[0]
        text, finish, token_logprobs, usage = (
            choice.text,
            choice.finish_reason,
            choice.logprobs.token_logprobs,
            answer.usage,
        )
    assert (text, finish) == (prompt_text, "length")
    assert token_logprobs[0] is None and len(token_logprobs) == len(PROMPT)
    expected = [float(reference[i, PROMPT[i + 1]]) for i in range(len(PROMPT) - 1)]
    assert token_logprobs[1:] == pytest.approx(expected, abs=TOLERANCE)
    assert (usage.prompt_tokens, usage.completion_tokens) == (len(PROMPT), 0)


def check_vllm_prompt_logprobs(http, entries: list, reference: torch.Tensor, top: int) -> None:
    assert len(entries) == len(PROMPT) and entries[0] is None
    for position, entry in enumerate(entries[1:]):
        token, row = PROMPT[position + 1], reference[position]
        assert next(iter(entry)) == str(token)  # the prompt token first, keyed by id as vLLM does
        assert set(entry) == {str(t) for t in [token, *row.topk(top).indices.tolist()]}
        for token_id, value in entry.items():
            assert value["logprob"] == pytest.approx(float(row[int(token_id)]), abs=TOLERANCE)
            assert value["decoded_token"] == decoded(http, [int(token_id)])[0]
        assert entry[str(token)]["rank"] == 1 + int((row > row[token]).sum())


def test_vllm_prompt_logprobs_on_both_endpoints(client, http, reference) -> None:
    completion = client.completions.create(
        model=MODEL_NAME, prompt=PROMPT, max_tokens=2, extra_body={"prompt_logprobs": 3, "ignore_eos": True}
    )
    check_vllm_prompt_logprobs(http, completion.model_dump()["choices"][0]["prompt_logprobs"], reference, 3)
    assert completion.choices[0].logprobs is None  # prompt_logprobs alone asks nothing of the output
    messages = [{"role": "user", "content": "What is a dict?"}]
    chat = client.chat.completions.create(
        model=MODEL_NAME, messages=messages, max_tokens=2, extra_body={"prompt_logprobs": 0}
    ).model_dump()
    templated = http.post("/tokenize", json={"messages": messages}).json()["tokens"]
    assert [None if e is None else int(next(iter(e))) for e in chat["prompt_logprobs"]] == [None, *templated[1:]]


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/completions", {"prompt": PROMPT, "max_tokens": 0}, "max_tokens"),
        ("/v1/completions", {"prompt": PROMPT, "stream": True, "prompt_logprobs": 1}, "prompt_logprobs"),
        ("/v1/chat/completions", {"messages": MESSAGES, "stream": True, "prompt_logprobs": 1}, "prompt_logprobs"),
        ("/v1/completions", {"prompt": PROMPT, "prompt_logprobs": 21}, "prompt_logprobs"),
    ],
)
def test_what_cannot_be_answered_is_a_400_naming_the_field(http, path, body, param) -> None:
    response = http.post(path, json={"model": MODEL_NAME, **body})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param or param in error["message"], error
