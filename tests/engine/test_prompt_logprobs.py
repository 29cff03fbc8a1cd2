"""Prompt logprobs: computed in the prefill, chunked or not, equal to transformers' log-softmax."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from tokenworks.engine import LLM, SamplingParams
from tokenworks.engine.model_runner import ModelRunner
from tokenworks.engine.request import Request
from tokenworks.engine.scheduler import ScheduledChunk

from .conftest import SMALL_KV_CACHE, random_prompts

TOLERANCE = 1e-4
TOP = 3


def reference_log_softmax(model_dir, prompt: list[int]) -> torch.Tensor:
    """(len - 1, V): row i is the distribution transformers gives prompt token i + 1."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        return torch.log_softmax(model(torch.tensor([prompt])).logits[0, :-1], dim=-1)


def assert_equal_to_reference(model_dir, prompt: list[int], logprobs: list, ranks: list) -> None:
    assert len(logprobs) == len(ranks) == len(prompt)
    assert logprobs[0] is None and ranks[0] is None  # nothing predicts the first token
    expected = reference_log_softmax(model_dir, prompt)
    for position, (token, entry, rank) in enumerate(zip(prompt[1:], logprobs[1:], ranks[1:], strict=True)):
        row = expected[position]
        assert next(iter(entry)) == token  # the prompt token first, then the top
        assert set(entry) == {token, *row.topk(TOP).indices.tolist()}
        for candidate, value in entry.items():
            assert value == pytest.approx(float(row[candidate]), abs=TOLERANCE)
        # its rank among the vocabulary, up to ties within the tolerance
        value = row[token]
        assert 1 + int((row > value + TOLERANCE).sum()) <= rank <= 1 + int((row > value - TOLERANCE).sum())


@pytest.fixture(scope="module")
def chunked_llm(llama_dir):
    """Chunked prefill: 16 tokens a step, so a prompt spans several steps, beside decodes."""
    with LLM(llama_dir, multiprocess=False, max_num_batched_tokens=16, block_size=16, **SMALL_KV_CACHE) as engine:
        yield engine


def test_prompt_logprobs_equal_transformers_through_chunked_prefill(chunked_llm, llama_dir) -> None:
    prompts = random_prompts(6, seed=21)
    asking = SamplingParams(max_tokens=3, temperature=0.0, prompt_logprobs=TOP, ignore_eos=True)
    plain = SamplingParams(max_tokens=3, temperature=0.0, ignore_eos=True)
    # Every other request asks, so steps mix scored prompts, plain prompts and decodes.
    outputs = chunked_llm.generate(prompts, [asking if i % 2 == 0 else plain for i in range(len(prompts))])
    for index, (prompt, output) in enumerate(zip(prompts, outputs, strict=True)):
        if index % 2:
            assert output.prompt_logprobs is None and output.prompt_ranks is None
        else:
            assert_equal_to_reference(llama_dir, prompt, output.prompt_logprobs, output.prompt_ranks)
            assert len(output.token_ids) == 3


def test_a_cached_prefix_is_computed_again_for_its_logprobs(chunked_llm, llama_dir) -> None:
    prompt = random_prompts(1, seed=22)[0] + random_prompts(1, seed=23)[0] + list(range(3, 40))
    plain = SamplingParams(max_tokens=2, temperature=0.0, ignore_eos=True)
    first = chunked_llm.generate(prompt, plain)[0]
    cached = chunked_llm.generate(prompt, plain)[0]
    assert first.num_cached_tokens == 0 and cached.num_cached_tokens == (len(prompt) - 1) // 16 * 16
    asking = SamplingParams(max_tokens=2, temperature=0.0, prompt_logprobs=TOP, ignore_eos=True)
    scored = chunked_llm.generate(prompt, asking)[0]
    assert scored.num_cached_tokens == 0  # read nothing from the cache
    assert scored.token_ids == first.token_ids
    assert_equal_to_reference(llama_dir, prompt, scored.prompt_logprobs, scored.prompt_ranks)
    assert chunked_llm.generate(prompt, plain)[0].num_cached_tokens == cached.num_cached_tokens


def test_a_streamed_request_gets_its_prompt_logprobs_once_with_its_first_token(llama_dir) -> None:
    from tokenworks.engine.core import EngineCore
    from tokenworks.engine.options import EngineOptions

    core = EngineCore(EngineOptions(model=llama_dir, max_num_batched_tokens=16, block_size=16, num_kv_blocks=32))
    prompt = random_prompts(1, seed=24)[0] + list(range(3, 30))
    core.add_request("r", prompt, SamplingParams(max_tokens=3, temperature=0.0, prompt_logprobs=0, ignore_eos=True))
    sent = []
    while core.has_work():
        sent += [output for output in core.step() if output.new_token_ids]
    assert [len(output.new_token_ids) for output in sent] == [1, 1, 1]
    assert sent[0].prompt_logprobs is not None and all(output.prompt_logprobs is None for output in sent[1:])
    assert [list(entry) for entry in sent[0].prompt_logprobs[1:]] == [[token] for token in prompt[1:]]


def test_a_request_computed_again_scores_only_what_it_lacks(llama_dir) -> None:
    """After a preemption a prompt is computed from the start; the positions already scored are
    not scored again, and the last prompt position (it predicts the first output) never is."""
    from tokenworks.model import load_model

    runner = ModelRunner(load_model(llama_dir), num_blocks=8, block_size=16)
    request = Request("r", list(range(3, 43)), SamplingParams(prompt_logprobs=1))  # 40 prompt tokens
    request.block_ids = [0, 1, 2]
    request.prompt_logprobs += [{5: -1.0}] * 19  # tokens 1..19 were scored before the preemption
    request.prompt_ranks += [1] * 19
    spans = [(first, count) for _, first, count in runner.prepare([ScheduledChunk(request, 0, 16)]).prompt_spans]
    assert spans == []  # positions 0..15 predict tokens 1..16: all scored
    spans = [(first, count) for _, first, count in runner.prepare([ScheduledChunk(request, 16, 16)]).prompt_spans]
    assert spans == [(19, 13)]  # positions 19..31 predict tokens 20..32
    spans = [(first, count) for _, first, count in runner.prepare([ScheduledChunk(request, 32, 8)]).prompt_spans]
    assert spans == [(32, 7)]  # positions 32..38; 39 predicts the first output token
    _, rows = runner.execute([ScheduledChunk(request, 32, 8)])
    assert [(row.first_position, tuple(row.hidden.shape)) for row in rows] == [(32, (7, 64))]
