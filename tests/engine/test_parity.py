"""Greedy output equals transformers' generate, token for token, however the engine batches."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tokenworks.engine import LLM, SamplingParams
from tokenworks.engine.llm import OFFLINE_OMP_SPIN_COUNT

from .conftest import SMALL_KV_CACHE, random_prompts, reference_greedy

NEW_TOKENS = 10
GREEDY = SamplingParams(max_tokens=NEW_TOKENS, temperature=0.0, ignore_eos=True)

ENGINE_SETTINGS = {
    "one batch": {"block_size": 16},
    "one batch in the CPU's default blocks (128 tokens)": {},
    "no prefix caching": {"enable_prefix_caching": False},
    "small prefill chunks": {"max_num_batched_tokens": 7},
    "preemption": {"num_kv_blocks": 24, "block_size": 4},
    "preemption with chunks": {"num_kv_blocks": 20, "block_size": 4, "max_num_batched_tokens": 9},
    "PyTorch ops only (no compiled kernels, F.linear)": {"kernels": "torch"},
}


@pytest.fixture(scope="module")
def expected(model_dir):
    prompts = random_prompts(32, shared_prefix=16)
    return prompts, reference_greedy(model_dir, prompts, NEW_TOKENS)


@pytest.mark.parametrize("setting", sorted(ENGINE_SETTINGS))
def test_greedy_matches_transformers(model_dir, expected, setting: str) -> None:
    prompts, reference = expected
    with LLM(model_dir, multiprocess=False, **(SMALL_KV_CACHE | ENGINE_SETTINGS[setting])) as llm:
        outputs = llm.generate(prompts, GREEDY)
        core = llm.client.core
        assert [output.token_ids for output in outputs] == reference
        assert all(output.finish_reason == "length" for output in outputs)
        assert core.kv_cache.usage == 0.0
        core.kv_cache.pool.check_invariants()
        if setting.startswith("preemption"):
            assert core.scheduler.num_preemptions > 0
        if setting == "one batch":
            assert core.kv_cache.pool.stats.hits > 0  # the shared prefix was reused
        if setting == "no prefix caching":
            assert core.kv_cache.pool.stats.hits == 0


def test_one_request_at_a_time_matches_and_reuses_the_cache(model_dir, expected) -> None:
    prompts, reference = expected
    with LLM(model_dir, multiprocess=False, block_size=16, **SMALL_KV_CACHE) as llm:
        outputs = [llm.generate(prompt, GREEDY)[0] for prompt in prompts[:8]]
        assert [output.token_ids for output in outputs] == reference[:8]
        # prompts 0, 2, 4, 6 share a 16-token prefix: one full block of 16, cached after the first
        assert [output.num_cached_tokens for output in outputs[:8:2]] == [0, 16, 16, 16]


def test_the_engine_process_gives_the_same_tokens(llama_dir) -> None:
    prompts = random_prompts(6, seed=3)
    reference = reference_greedy(llama_dir, prompts, NEW_TOKENS)
    before = os.environ.get("GOMP_SPINCOUNT")
    with LLM(llama_dir, threads=1, **SMALL_KV_CACHE) as llm:
        assert [output.token_ids for output in llm.generate(prompts, GREEDY)] == reference
        child = Path(f"/proc/{llm.client.process.pid}/environ")
        if child.exists():  # Linux: the core process got LLM's default spin count, this one kept its own
            assert f"GOMP_SPINCOUNT={OFFLINE_OMP_SPIN_COUNT}".encode() in child.read_bytes().split(b"\0")
    assert os.environ.get("GOMP_SPINCOUNT") == before
