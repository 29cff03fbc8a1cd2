"""LoRA adapters through `tokenworks serve`: static and loaded at run time, picked by `model`, through
the official `openai` client; each answers as its merged checkpoint does, and a bad one is a 400."""

from __future__ import annotations

import asyncio

import httpx
import openai
import pytest

from tests.adapters import ALL_TARGETS, make_adapter
from tests.engine.conftest import reference_greedy
from tests.serve.conftest import ServeProcess
from tokenworks.bench.client import probe
from tokenworks.model import CausalLM, Tokenizer, preset_config, save_model
from tokenworks.train.sft import merge_adapter

PROMPT = "def parse(text):"
TOKENS = 12


@pytest.fixture(scope="module")
def adapters(serve_model_dir, tmp_path_factory):
    """Two adapters of the serving test model, each with its merged checkpoint, and one of another base."""
    root = tmp_path_factory.mktemp("serve-adapters")
    made = {}
    for name, rank, targets, seed in (("qv", 4, ("q_proj", "v_proj"), 1), ("every", 8, ALL_TARGETS, 2)):
        adapter = make_adapter(serve_model_dir, root / name, rank, targets, seed)
        made[name] = (adapter, merge_adapter(adapter, root / f"{name}-merged", serve_model_dir))
    other_base = root / "other-base"
    tokenizer = Tokenizer.load(serve_model_dir)
    save_model(CausalLM(preset_config("micro", tokenizer.vocab_size)).init_weights(seed=0), other_base)
    made["foreign"] = (make_adapter(other_base, root / "foreign", 4, ("q_proj", "v_proj"), 3), None)
    return made


@pytest.fixture(scope="module")
def lora_server(serve_model_dir, adapters):
    server = ServeProcess(
        serve_model_dir, "--served-model-name", "base", "--lora-modules", f"qv={adapters['qv'][0]}",
        "--max-loras", "2", "--max-lora-rank", "8", "--enable-lora",
    ).wait_healthy()  # fmt: skip
    yield server
    server.stop()


def expected_text(checkpoint, tokenizer: Tokenizer) -> str:
    ids = reference_greedy(checkpoint, [tokenizer.encode(PROMPT)], TOKENS)[0]
    return tokenizer.decode(ids)


def complete(client: openai.OpenAI, model: str) -> str:
    answer = client.completions.create(
        model=model, prompt=PROMPT, max_tokens=TOKENS, temperature=0, extra_body={"ignore_eos": True}
    )
    assert answer.model == model
    return answer.choices[0].text


def test_adapters_are_served_by_name_and_answer_as_their_merged_checkpoints(lora_server, adapters, serve_model_dir):
    tokenizer = Tokenizer.load(serve_model_dir)
    client = openai.OpenAI(base_url=f"{lora_server.url}/v1", api_key="unused")
    models = {card.id: card for card in client.models.list().data}
    assert sorted(models) == ["base", "qv"]
    assert (models["qv"].parent, models["qv"].root, models["base"].parent) == ("base", str(adapters["qv"][0]), None)
    assert asyncio.run(probe(lora_server.url)).model == "base"  # tokenworks bench measures the base unless told

    base, qv = expected_text(serve_model_dir, tokenizer), expected_text(adapters["qv"][1], tokenizer)
    assert base != qv
    assert complete(client, "qv") == qv
    assert complete(client, "base") == base
    stream = client.chat.completions.create(
        model="qv", messages=[{"role": "user", "content": "hi"}], max_tokens=6, temperature=0, stream=True
    )
    chunks = list(stream)
    assert {chunk.model for chunk in chunks} == {"qv"}
    with pytest.raises(openai.NotFoundError, match="'nope' does not exist; this server serves 'base', 'qv'"):
        complete(client, "nope")


def test_adapters_load_replace_and_unload_at_run_time(lora_server, adapters, serve_model_dir):
    tokenizer = Tokenizer.load(serve_model_dir)
    client = openai.OpenAI(base_url=f"{lora_server.url}/v1", api_key="unused")
    with httpx.Client(base_url=lora_server.url, timeout=60) as http:
        load = lambda body: http.post("/v1/load_lora_adapter", json=body)  # noqa: E731
        every = {"lora_name": "every", "lora_path": str(adapters["every"][0])}
        answer = load(every)
        assert (answer.status_code, answer.text) == (200, "Success: LoRA adapter 'every' added successfully.")
        assert complete(client, "every") == expected_text(adapters["every"][1], tokenizer)
        assert [card.parent for card in client.models.list().data] == [None, "base", "base"]

        refusals = {
            "every": (every, "the LoRA adapter 'every' is loaded already (load_inplace: true replaces it)", "lora_name"),
            "full": ({"lora_name": "third", "lora_path": str(adapters["qv"][0])}, "2 LoRA adapters are loaded, this "
                     "server's --max-loras: unload one first", None),
            "base": ({"lora_name": "base", "lora_path": str(adapters["qv"][0])}, "'base' is the base model's name",
                     "lora_name"),
            "unknown": ({**every, "lora_int_id": 3}, "lora_int_id is not supported", "lora_int_id"),
        }  # fmt: skip
        for case, (body, message, param) in refusals.items():
            answer = load(body)
            assert answer.status_code == 400, case
            error = answer.json()["error"]
            assert message in error["message"] and error.get("param") == param, (case, error)

        # In place: the same name now means the qv adapter, with no restart.
        answer = load({"lora_name": "every", "lora_path": str(adapters["qv"][0]), "load_inplace": True})
        assert answer.status_code == 200, answer.text
        assert complete(client, "every") == expected_text(adapters["qv"][1], tokenizer)

        answer = http.post("/v1/unload_lora_adapter", json={"lora_name": "every"})
        assert (answer.status_code, answer.text) == (200, "Success: LoRA adapter 'every' removed successfully.")
        with pytest.raises(openai.NotFoundError):
            complete(client, "every")
        answer = http.post("/v1/unload_lora_adapter", json={"lora_name": "every"})
        assert answer.status_code == 404 and "'every' is not loaded" in answer.json()["error"]["message"]
        assert [card.id for card in client.models.list().data] == ["base", "qv"]


def test_bad_adapters_are_a_400_that_names_the_problem(lora_server, adapters, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = {
        "foreign": (adapters["foreign"][0], "fit this base model"),
        "missing": (tmp_path / "nowhere", "adapter_config.json not found"),
        "empty": (empty, "is not a LoRA adapter directory"),
    }
    with httpx.Client(base_url=lora_server.url, timeout=60) as http:
        for case, (path, message) in cases.items():
            answer = http.post("/v1/load_lora_adapter", json={"lora_name": "x", "lora_path": str(path)})
            assert answer.status_code == 400, case
            error = answer.json()["error"]
            assert error["param"] == "lora_path" and message in error["message"], (case, error)
            assert "cannot load the LoRA adapter 'x'" in error["message"]
        assert http.get("/health").status_code == 200  # and it serves on
        models = [card["id"] for card in http.get("/v1/models").json()["data"]]
        assert models == ["base", "qv"]


def test_a_bad_static_adapter_stops_the_start_with_its_reason(serve_model_dir, tmp_path):
    server = ServeProcess(serve_model_dir, "--lora-modules", f"x={tmp_path / 'nowhere'}")
    try:
        assert server.process.wait(120) == 3  # uvicorn's STARTUP_FAILURE
        output = server.output()
        assert "nowhere/adapter_config.json not found" in output and "Traceback" not in output, output
    finally:
        server.stop()
    bad = ServeProcess(serve_model_dir, "--lora-modules", "no-path")
    try:
        assert bad.process.wait(60) == 2
        assert "'no-path' is not NAME=PATH" in bad.output()
    finally:
        bad.stop()


def test_a_hot_swap_under_load_fails_no_request(lora_server, adapters, serve_model_dir):
    """Streams keep asking for one adapter name while it is replaced in place, back and forth:
    every request completes, each answer is wholly one adapter's or the other's."""
    client = openai.AsyncOpenAI(base_url=f"{lora_server.url}/v1", api_key="unused")
    paths = [str(adapters["every"][0]), str(adapters["qv"][0])]

    async def one_request() -> str:
        stream = await client.completions.create(
            model="live", prompt=PROMPT, max_tokens=TOKENS, temperature=0, stream=True,
            extra_body={"ignore_eos": True},
        )  # fmt: skip
        return "".join([chunk.choices[0].text async for chunk in stream if chunk.choices])

    async def swaps(http: httpx.AsyncClient) -> int:
        done = 0
        for turn in range(6):
            body = {"lora_name": "live", "lora_path": paths[turn % 2], "load_inplace": True}
            answer = await http.post("/v1/load_lora_adapter", json=body)
            assert answer.status_code == 200, answer.text
            done += 1
            await asyncio.sleep(0.05)
        return done

    async def main() -> tuple[list, int]:
        async with httpx.AsyncClient(base_url=lora_server.url, timeout=60) as http:
            answer = await http.post("/v1/load_lora_adapter", json={"lora_name": "live", "lora_path": paths[1]})
            assert answer.status_code == 200, answer.text
            results = await asyncio.gather(*(one_request() for _ in range(24)), swaps(http), return_exceptions=True)
            await http.post("/v1/unload_lora_adapter", json={"lora_name": "live"})
        return results[:-1], results[-1]

    texts, swapped = asyncio.run(main())
    assert swapped == 6
    assert [text for text in texts if isinstance(text, BaseException)] == []
    tokenizer = Tokenizer.load(serve_model_dir)
    either = {expected_text(adapters[name][1], tokenizer) for name in ("every", "qv")}
    assert len(either) == 2 and set(texts) <= either
