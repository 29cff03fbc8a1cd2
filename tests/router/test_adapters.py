"""LoRA adapters through the router: one load reaches every worker, a swap behind a served name
under load fails no request, the old version put back answers as before token for token, and a
worker that comes back restarted is given the adapters again."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import httpx
import openai
import pytest

from tests.adapters import ALL_TARGETS, make_adapter
from tests.router.conftest import RouterProcess
from tests.serve.conftest import ServeProcess

PROMPT = "def parse(text):"
TOKENS = 12
NAME = "docs-qa"  # the served name the versions go behind


@pytest.fixture(scope="module")
def versions(serve_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("router-adapters")
    return [str(make_adapter(serve_model_dir, root / f"v{k}", 4, ALL_TARGETS, seed=k)) for k in (1, 2)]


def served_adapters(worker) -> set[str]:
    cards = httpx.get(f"{worker.url}/v1/models", timeout=10).json()["data"]
    return {card["id"] for card in cards if card.get("parent")}


def greedy(client: openai.OpenAI) -> str:
    answer = client.completions.create(
        model=NAME, prompt=PROMPT, max_tokens=TOKENS, temperature=0, extra_body={"ignore_eos": True}
    )
    return answer.choices[0].text


def wait_until(condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_adapters_through_the_router_swap_under_load_and_come_back_with_a_worker(serve_model_dir, versions):
    workers = [ServeProcess(serve_model_dir) for _ in range(2)]
    for worker in workers:
        worker.wait_healthy()
    router = RouterProcess([w.url for w in workers], "--policy", "round-robin").wait_healthy()
    try:
        http = httpx.Client(base_url=router.url, timeout=60)
        client = openai.OpenAI(base_url=f"{router.url}/v1", api_key="unused")
        loaded = http.post("/v1/load_lora_adapter", json={"lora_name": NAME, "lora_path": versions[0]})
        assert loaded.status_code == 200, loaded.text
        assert [(row["id"], row["status"]) for row in loaded.json()["workers"]] == [("w0", 200), ("w1", 200)]
        assert [served_adapters(worker) for worker in workers] == [{NAME}, {NAME}]
        again = http.post("/v1/load_lora_adapter", json={"lora_name": NAME, "lora_path": versions[1]})
        assert again.status_code == 400 and "load_inplace" in again.json()["error"]["message"]
        bad = http.post("/v1/load_lora_adapter", json={"lora_name": "nope", "lora_path": "/no/such/adapter"})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "lora_path"
        before = [greedy(client) for _ in range(2)]  # one from each worker (round-robin)
        assert before[0] == before[1]

        # v2 goes behind the name while streams keep asking for it, then v1 is put back
        async def under_load() -> list:
            stream_client = openai.AsyncOpenAI(base_url=f"{router.url}/v1", api_key="unused")

            async def one() -> str:
                stream = await stream_client.completions.create(
                    model=NAME, prompt=PROMPT, max_tokens=TOKENS, temperature=0, stream=True,
                    extra_body={"ignore_eos": True},
                )  # fmt: skip
                return "".join([chunk.choices[0].text async for chunk in stream if chunk.choices])

            async def swaps() -> list[int]:
                async with httpx.AsyncClient(base_url=router.url, timeout=60) as swapper:
                    statuses = []
                    for turn in range(4):
                        body = {"lora_name": NAME, "lora_path": versions[(turn + 1) % 2], "load_inplace": True}
                        statuses.append((await swapper.post("/v1/load_lora_adapter", json=body)).status_code)
                        await asyncio.sleep(0.05)
                    return statuses

            return await asyncio.gather(*(one() for _ in range(24)), swaps(), return_exceptions=True)

        *texts, statuses = asyncio.run(under_load())
        assert statuses == [200, 200, 200, 200]
        assert [text for text in texts if isinstance(text, BaseException)] == []
        promoted = http.post(
            "/v1/load_lora_adapter", json={"lora_name": NAME, "lora_path": versions[1], "load_inplace": True}
        )
        assert promoted.status_code == 200
        after = greedy(client)
        assert after != before[0]  # v2 answers otherwise
        assert set(texts) <= {before[0], after}
        rolled_back = http.post(
            "/v1/load_lora_adapter", json={"lora_name": NAME, "lora_path": versions[0], "load_inplace": True}
        )
        assert rolled_back.status_code == 200
        assert [greedy(client) for _ in range(2)] == before  # token for token, on both workers

        # w0 dies and comes back on its port with nothing loaded: the router gives it the adapter again
        port = workers[0].port
        os.kill(workers[0].process.pid, signal.SIGKILL)
        workers[0].process.wait()
        wait_until(lambda: not http.get("/workers").json()["workers"][0]["healthy"])
        workers[0] = ServeProcess(serve_model_dir, port=port).wait_healthy()
        wait_until(lambda: served_adapters(workers[0]) == {NAME})
        wait_until(lambda: http.get("/workers").json()["workers"][0]["healthy"])
        assert {greedy(client) for _ in range(4)} == {before[0]}

        unloaded = http.post("/v1/unload_lora_adapter", json={"lora_name": NAME})
        assert unloaded.status_code == 200 and [served_adapters(worker) for worker in workers] == [set(), set()]
        assert http.post("/v1/unload_lora_adapter", json={"lora_name": NAME}).status_code == 404
        http.close()
    finally:
        router.stop()
        for worker in workers:
            worker.stop()
