"""A prompt tokenized by the router is not tokenized again by the worker (serve/pretokenized.py):
the header's ids are used exactly when they were made for this text by this tokenizer."""

from __future__ import annotations

import base64

import pytest

from tokenworks.model import Tokenizer
from tokenworks.serve.pretokenized import HEADER, header_value, prompt_of, token_ids_of

TEXT = "The quick brown fox jumps over the lazy dog."


def test_the_header_hands_over_exactly_the_ids_for_that_text_and_tokenizer():
    value = header_value("0123456789abcdef", TEXT, [5, 0, 70000, 2**32 - 1])
    assert token_ids_of(value, "0123456789abcdef", TEXT) == [5, 0, 70000, 2**32 - 1]
    assert token_ids_of(value, "fedcba9876543210", TEXT) is None  # another tokenizer
    assert token_ids_of(value, "0123456789abcdef", TEXT + " ") is None  # another text
    assert token_ids_of(None, "0123456789abcdef", TEXT) is None
    fingerprint, digest, _ = value.split(":")
    assert token_ids_of(f"{fingerprint}:{digest}:not base64!", fingerprint, TEXT) is None
    three_bytes = base64.b64encode(b"abc").decode()  # not a whole number of uint32 ids
    assert token_ids_of(f"{fingerprint}:{digest}:{three_bytes}", fingerprint, TEXT) is None
    assert token_ids_of(f"{fingerprint}:{digest}:", fingerprint, TEXT) == []


def test_a_worker_uses_the_ids_only_when_fingerprint_and_text_match(server, http, serve_model_dir):
    tokenizer = Tokenizer.load(serve_model_dir)
    assert http.get("/kv_events").json()["tokenizer"] == tokenizer.fingerprint
    own = tokenizer.encode(TEXT)
    handed = [7, 8, 9]  # not the text's tokenization: seen only if the worker took them

    def prompt_tokens(header: str | None, path: str = "/v1/completions") -> int:
        body = {"prompt": TEXT, "max_tokens": 1, "temperature": 0}
        if path.endswith("/chat/completions"):
            body = {"messages": [{"role": "user", "content": TEXT}], "max_tokens": 1, "temperature": 0}
        response = http.post(path, json=body, headers={HEADER: header} if header else {})
        assert response.status_code == 200, response.text
        return response.json()["usage"]["prompt_tokens"]

    assert prompt_tokens(None) == len(own)
    assert prompt_tokens(header_value(tokenizer.fingerprint, TEXT, handed)) == 3
    assert prompt_tokens(header_value("someone-else", TEXT, handed)) == len(own)
    assert prompt_tokens(header_value(tokenizer.fingerprint, "another text", handed)) == len(own)
    chat_text = tokenizer.apply_chat_template([{"role": "user", "content": TEXT}], True)
    chat = "/v1/chat/completions"
    assert prompt_tokens(None, chat) == len(tokenizer.encode(chat_text))
    assert prompt_tokens(header_value(tokenizer.fingerprint, chat_text, handed), chat) == 3


@pytest.mark.parametrize("prompt", [[1, 2, 3], TEXT])
def test_prompt_of_leaves_token_ids_and_unmarked_text_alone(serve_model_dir, prompt):
    tokenizer = Tokenizer.load(serve_model_dir)
    assert prompt_of({}, tokenizer, prompt) == prompt
    assert prompt_of({HEADER: header_value(tokenizer.fingerprint, TEXT, [4])}, None, prompt) == prompt


def test_the_router_hands_its_ids_only_to_workers_with_its_tokenizer(serve_model_dir):
    from tokenworks.router.policies import RoutedRequest
    from tokenworks.router.prompts import PromptTokenizer
    from tokenworks.router.proxy import _with_tokens
    from tokenworks.router.workers import Worker

    prompts = PromptTokenizer(serve_model_dir)
    body = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": TEXT}]}
    prompt = prompts.prompt("/v1/chat/completions", body)
    routed = RoutedRequest(body, {}, tokens=prompt.token_ids, tokens_header=prompts.header(prompt))
    same, other, unknown = (Worker(f"http://127.0.0.1:{9000 + i}", f"w{i}") for i in range(3))
    same.tokenizer, other.tokenizer = prompts.tokenizer.fingerprint, "0000000000000000"
    sent = _with_tokens({"accept": "text/event-stream"}, routed, same)
    assert sent["accept"] == "text/event-stream"
    # what the worker renders of the same messages is what the router tokenized: it takes the ids
    worker_text = Tokenizer.load(serve_model_dir).apply_chat_template(body["messages"], True)
    assert token_ids_of(sent[HEADER], same.tokenizer, worker_text) == prompts.tokenizer.encode(worker_text)
    assert HEADER not in _with_tokens({}, routed, other) and HEADER not in _with_tokens({}, routed, unknown)
    ids_prompt = prompts.prompt("/v1/completions", {"prompt": [1, 2, 3]})
    assert ids_prompt.token_ids == [1, 2, 3] and prompts.header(ids_prompt) is None  # nothing to hand over
