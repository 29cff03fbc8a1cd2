"""What benchmark clients time in a stream: a chat stream's first chunk (the role) goes out with the first token.

`vllm bench serve` takes a chat request's TTFT at its first chunk that has choices, role
chunk included; vLLM's server sends that chunk with the first token. A server that sent
it on arrival would report the time to accept a request, not the time to its first token.
"""

from __future__ import annotations

import json
import threading

import httpx
import pytest

from .conftest import start_server


@pytest.fixture(scope="module")
def one_slot(serve_model_dir):
    """One sequence at a time, so a second request waits for the first; a long context for a long first one."""
    running = start_server(serve_model_dir, engine_options={"max_num_seqs": 1, "max_model_len": 32768})
    yield running
    running.stop()


def read_events(url: str, body: dict, events: list[dict], first: threading.Event) -> None:
    with (
        httpx.Client(base_url=url, timeout=120) as client,
        client.stream("POST", "/v1/chat/completions", json=body) as response,
    ):
        for line in response.iter_lines():
            if line.startswith("data: {"):
                events.append(json.loads(line[6:]))
                first.set()


def test_chat_stream_sends_no_chunk_before_its_first_token(one_slot) -> None:
    blocker = {"prompt": "hi", "max_tokens": 32000, "ignore_eos": True, "stream": True}
    chat = {
        "messages": [{"role": "user", "content": "hi"}],
        "max_completion_tokens": 3,
        "ignore_eos": True,
        "stream": True,
    }
    events: list[dict] = []
    first = threading.Event()
    with httpx.Client(base_url=one_slot.url, timeout=120) as client:
        with client.stream("POST", "/v1/completions", json=blocker) as running:
            blocker_lines = running.iter_lines()  # kept: a dropped line iterator closes the stream
            next(blocker_lines)  # the blocker holds the only sequence slot now
            reader = threading.Thread(target=read_events, args=(one_slot.url, chat, events, first), daemon=True)
            reader.start()
            assert not first.wait(0.5), f"a chunk went out before the request had a token: {events[:1]}"
            stats = one_slot.run(one_slot.state.engine.call("stats")).scheduler
            assert (stats.num_running, stats.num_waiting) == (1, 1)  # the chat request was waiting all along
        # leaving the blocker's stream disconnects it, which aborts it and frees the slot
        reader.join(timeout=120)
    assert [e["choices"][0]["delta"] for e in events[:1]] == [{"role": "assistant", "content": ""}]
    assert "role" not in events[1]["choices"][0]["delta"]
    assert events[-1]["choices"][0]["finish_reason"] == "length"
