"""Sampling parameters end to end: seeds, filters, penalties, stops, lengths, logprobs."""

from __future__ import annotations

import pytest
import torch

from tokenworks.engine import LLM, SamplingParams
from tokenworks.engine import sampler as sampler_module
from tokenworks.engine.request import Request
from tokenworks.engine.sampler import Sampler

from .conftest import SMALL_KV_CACHE, compiled_kernels, random_prompts


@pytest.fixture(scope="module")
def llm(llama_dir):
    with LLM(llama_dir, multiprocess=False, **SMALL_KV_CACHE) as engine:
        yield engine


def test_seeded_sampling_is_reproducible_whatever_the_batch(llm) -> None:
    prompts = random_prompts(4, seed=5)
    seeded = SamplingParams(max_tokens=12, temperature=1.0, seed=42, ignore_eos=True)
    alone = llm.generate(prompts[0], seeded)[0].token_ids
    together = llm.generate(prompts, [seeded] + [SamplingParams(max_tokens=12, temperature=1.0)] * 3)
    assert together[0].token_ids == alone
    other_seed = llm.generate(prompts[0], SamplingParams(max_tokens=12, temperature=1.0, seed=43, ignore_eos=True))
    assert other_seed[0].token_ids != alone


def test_top_k_one_is_greedy(llm) -> None:
    prompt = random_prompts(1, seed=6)[0]
    greedy = llm.generate(prompt, SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True))[0]
    top1 = llm.generate(prompt, SamplingParams(max_tokens=8, temperature=1.5, top_k=1, ignore_eos=True))[0]
    assert top1.token_ids == greedy.token_ids


def test_lengths_stops_and_eos(llm) -> None:
    prompt = random_prompts(1, seed=7)[0]
    free = llm.generate(prompt, SamplingParams(max_tokens=10, temperature=0.0, ignore_eos=True))[0]
    assert (len(free.token_ids), free.finish_reason) == (10, "length")
    stop_id = free.token_ids[4]
    stopped = llm.generate(prompt, SamplingParams(max_tokens=10, temperature=0.0, stop_token_ids=[stop_id]))[0]
    first = free.token_ids.index(stop_id)
    assert stopped.token_ids == free.token_ids[: first + 1]
    assert (stopped.finish_reason, stopped.stop_reason) == ("stop", stop_id)
    held = llm.generate(
        prompt, SamplingParams(max_tokens=10, temperature=0.0, stop_token_ids=[stop_id], min_tokens=first + 2)
    )[0]
    assert stop_id not in held.token_ids[: first + 2] and len(held.token_ids) >= first + 2


def test_stop_strings_cut_the_text(llm) -> None:
    prompt = random_prompts(1, seed=8)[0]
    full = llm.generate(prompt, SamplingParams(max_tokens=16, temperature=0.0, ignore_eos=True))[0]
    stop = full.text[5:8]
    assert stop and stop.strip()
    cut = llm.generate(prompt, SamplingParams(max_tokens=16, temperature=0.0, ignore_eos=True, stop=[stop]))[0]
    assert (cut.text, cut.finish_reason, cut.stop_reason) == (full.text[: full.text.index(stop)], "stop", stop)
    kept = llm.generate(
        prompt,
        SamplingParams(max_tokens=16, temperature=0.0, ignore_eos=True, stop=[stop], include_stop_str_in_output=True),
    )[0]
    assert kept.text == full.text[: full.text.index(stop) + len(stop)]
    assert llm.client.core.kv_cache.usage == 0.0  # the stopped request was aborted in the core


def test_logprobs_are_the_models_log_softmax(llm, llama_dir) -> None:
    from tokenworks.model import load_model

    prompt = random_prompts(1, seed=9)[0]
    output = llm.generate(prompt, SamplingParams(max_tokens=3, temperature=0.0, logprobs=2, ignore_eos=True))[0]
    model = load_model(llama_dir)
    ids = torch.tensor([prompt + output.token_ids])
    with torch.no_grad():
        expected = torch.log_softmax(model(ids)[0, len(prompt) - 1 : -1], dim=-1)
    for position, (token, logprobs) in enumerate(zip(output.token_ids, output.logprobs, strict=True)):
        top = expected[position].topk(2)
        assert set(logprobs) == {token, *top.indices.tolist()}
        assert logprobs[token] == pytest.approx(float(expected[position, token]), abs=1e-4)


def _sample(params: SamplingParams, logits: list[float], output: list[int] = (), prompt: list[int] = (1,)) -> int:
    request = Request("r", list(prompt), params, eos_token_ids=frozenset({0}))
    for token in output:
        request.append_output_token(token)
    return Sampler(seed=0)(torch.tensor([logits]), [request])[0].token_id


def test_filters_and_penalties_on_known_logits() -> None:
    greedy = SamplingParams(temperature=0.0)
    assert _sample(greedy, [5.0, 1.0, 4.9]) == 0
    assert _sample(SamplingParams(temperature=0.0, min_tokens=1), [5.0, 1.0, 4.9]) == 2  # EOS (0) suppressed
    assert _sample(SamplingParams(temperature=0.0, repetition_penalty=2.0), [5.0, 1.0, 4.9], prompt=[0]) == 2
    assert _sample(SamplingParams(temperature=0.0, frequency_penalty=0.2), [5.0, 1.0, 4.9], output=[0]) == 2
    assert _sample(SamplingParams(temperature=0.0, presence_penalty=0.05), [5.0, 1.0, 4.9], output=[0, 0]) == 0
    for seed in range(20):  # top-p 0.5 and min-p 0.5 leave only the most likely token here
        assert _sample(SamplingParams(temperature=1.0, top_p=0.5, seed=seed), [3.0, 0.0, 1.0]) == 0
        assert _sample(SamplingParams(temperature=1.0, min_p=0.5, seed=seed), [3.0, 0.0, 1.0]) == 0


def test_a_greedy_batch_gives_logprobs_only_to_the_requests_that_ask() -> None:
    logits = torch.tensor([[0.0, 2.0, 1.0], [3.0, 0.0, 1.0]])
    plain = Request("plain", [1], SamplingParams(temperature=0.0))
    asking = Request("asking", [1], SamplingParams(temperature=0.0, logprobs=1))
    tokens = Sampler(seed=0)(logits, [plain, asking])
    assert [token.token_id for token in tokens] == [1, 0]
    assert tokens[0].logprobs is None
    assert tokens[1].logprobs == pytest.approx({0: float(torch.log_softmax(logits[1], -1)[0])})
    only_plain = Sampler(seed=0)(logits, [plain, Request("other", [1], SamplingParams(temperature=0.0))])
    assert [(token.token_id, token.logprobs) for token in only_plain] == [(1, None), (0, None)]


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        ({"max_tokens": 0}, "max_tokens must be at least 1"),
        ({"temperature": -1.0}, "temperature must be non-negative"),
        ({"top_p": 0.0}, "top_p must be in"),
        ({"min_p": 1.5}, "min_p must be in"),
        ({"presence_penalty": 3.0}, "presence_penalty must be in"),
        ({"logprobs": 50}, "logprobs must be between"),
        ({"stop": [""]}, "stop must hold non-empty strings"),
    ],
)
def test_invalid_sampling_parameters_are_value_errors(change: dict, complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        SamplingParams(**change)


def test_prompts_beyond_the_context_are_refused(llm) -> None:
    with pytest.raises(ValueError, match=r"the prompt \(250 tokens\) plus max_tokens \(10\) is 260 tokens"):
        llm.generate([5] * 250, SamplingParams(max_tokens=10))
    with pytest.raises(ValueError, match="prompt token ids must be integers"):
        llm.generate([[5, 99999]], SamplingParams(max_tokens=1))


def test_a_request_that_does_not_stream_reports_once_with_every_token(llm) -> None:
    core = llm.client.core
    prompt = random_prompts(1, seed=10)[0]
    params = SamplingParams(max_tokens=6, temperature=0.0, logprobs=1, ignore_eos=True)
    core.add_request("streamed", prompt, params)
    core.add_request("final-only", prompt, params, stream=False)
    reports: dict[str, list] = {"streamed": [], "final-only": []}
    while core.has_work():
        for output in core.step():
            reports[output.request_id].append(output)
    (final,) = reports["final-only"]
    streamed = reports["streamed"]
    assert len(streamed) == 6
    assert final.new_token_ids == [token for output in streamed for token in output.new_token_ids]
    assert final.logprobs == [entry for output in streamed for entry in output.logprobs]
    assert final.finish_reason == streamed[-1].finish_reason == "length"


@pytest.mark.parametrize("vocab", [37, 8192])
def test_the_compiled_greedy_tokens_equal_argmax(vocab: int) -> None:
    """Ties (the first counts), a NaN (it wins, as in torch), -inf rows and a tail past the
    16-lane vectors."""
    kernels = compiled_kernels()
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(9, vocab, generator=generator)
    logits[1, [3, vocab - 2]] = 50.0
    logits[2, [vocab - 1, 5]] = float("nan")
    logits[3] = float("-inf")
    logits[4, vocab - 1] = 60.0  # in the tail after the last whole vector
    logits[5] = 2.0  # all equal
    expected = logits.argmax(dim=-1)
    assert kernels.greedy_tokens(logits).tolist() == expected.tolist()
    assert kernels.greedy_tokens(logits[:, 1:]).tolist() == logits[:, 1:].argmax(dim=-1).tolist()  # strided rows
    assert expected[:6].tolist() == [expected[0].item(), 3, 5, 0, vocab - 1, 0]


def _reference_filter(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Top-k, top-p and min-p on one row of scaled logits, by a whole sort: the definition."""
    probabilities = torch.softmax(logits, -1)
    keep = torch.ones_like(probabilities, dtype=torch.bool)
    order = probabilities.argsort(descending=True, stable=True)
    if 0 < params.top_k < logits.shape[0]:
        keep &= logits >= logits[order[params.top_k - 1]]
    renormalized = torch.where(keep, probabilities, 0.0)
    renormalized /= renormalized.sum()
    if params.top_p < 1.0:
        sorted_mass = renormalized[order]
        before = sorted_mass.cumsum(0) - sorted_mass
        keep &= torch.zeros_like(keep).index_put_((order,), before < params.top_p)
    if params.min_p > 0.0:
        keep &= probabilities >= params.min_p * probabilities.max()
    return keep


@pytest.mark.parametrize("vocab", [50, 3000, 40_000])
def test_the_batched_filters_keep_the_tokens_a_whole_sort_keeps(vocab: int) -> None:
    generator = torch.Generator().manual_seed(vocab)
    params = [
        SamplingParams(temperature=1.0, top_k=7),
        SamplingParams(temperature=1.0, top_p=0.8),
        SamplingParams(temperature=1.0, top_p=0.3),  # most rows reach 0.3 among the candidates
        SamplingParams(temperature=1.0, min_p=0.2),
        SamplingParams(temperature=1.0, top_k=40, top_p=0.6, min_p=0.05),
        SamplingParams(temperature=1.0),
    ]
    # Peaked rows (a few likely tokens, as trained models give) and flat ones (random weights'),
    # so top-p takes both its partial sort and its whole one.
    logits = torch.cat([torch.randn(len(params), vocab, generator=generator) * scale for scale in (6.0, 0.5)])
    params = params * 2
    width = -(-vocab // sampler_module.CDF_BLOCK) * sampler_module.CDF_BLOCK
    padded = torch.nn.functional.pad(logits, (0, width - vocab), value=float("-inf"))
    filtered = sampler_module.filtered_probabilities(padded, params, vocab)
    assert torch.all(filtered[:, vocab:] == 0)
    for row, p in enumerate(params):
        kept = filtered[row, :vocab] > 0
        assert torch.equal(kept, _reference_filter(logits[row], p)), (row, p)
        expected = torch.softmax(logits[row], -1)[kept]  # in proportion: top-k renormalizes
        actual = filtered[row, :vocab][kept]
        torch.testing.assert_close(actual / actual.sum(), expected / expected.sum(), rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("vocab", [6, 100_000])  # one level, and blocks then tokens
def test_the_inverse_cdf_lands_on_the_token_whose_interval_holds_the_draw(vocab: int) -> None:
    width = -(-vocab // sampler_module.CDF_BLOCK) * sampler_module.CDF_BLOCK
    probabilities = torch.zeros(1, width)
    # Masses 0.125, 0.25, 0.5, 0.125 (exact in binary), tokens without mass between and after them.
    tokens = [0, 2, vocab // 2, vocab - 1] if vocab > 6 else [0, 2, 3, 5]
    probabilities[0, tokens] = torch.tensor([0.125, 0.25, 0.5, 0.125])
    draws = {0.0: 0, 0.1: 0, 0.125: 1, 0.3: 1, 0.375: 2, 0.874: 2, 0.875: 3, 1 - 2**-53: 3}
    for uniform, index in draws.items():
        chosen = sampler_module.inverse_cdf(probabilities, torch.tensor([uniform], dtype=torch.float64))
        assert chosen.tolist() == [tokens[index]], uniform
    # Scaled masses (not summing to 1) and many rows: never a token without mass.
    rows = torch.rand(64, width, generator=torch.Generator().manual_seed(1))
    rows[rows < 0.7] = 0.0
    rows[:, vocab:] = 0.0
    rows[:, 1] += 0.01  # every row has some mass
    chosen = sampler_module.inverse_cdf(rows * 3.0, torch.rand(64, dtype=torch.float64))
    assert bool(torch.all(rows[torch.arange(64), chosen] > 0))


def test_sampled_tokens_follow_the_distribution_and_the_seed() -> None:
    logits = torch.log(torch.tensor([[0.1, 0.2, 0.3, 0.4]]))
    draws = 20_000
    sampler = Sampler(seed=0)
    requests = [Request("r", [1], SamplingParams(temperature=1.0))]
    counts = torch.bincount(torch.tensor([sampler(logits, requests)[0].token_id for _ in range(draws)]), minlength=4)
    # 20,000 draws: a standard deviation of at most 0.0035 per frequency; 0.015 is over four.
    torch.testing.assert_close(counts / draws, torch.tensor([0.1, 0.2, 0.3, 0.4]), atol=0.015, rtol=0)

    # A seeded request's tokens come from its own generator: the same whatever the engine's seed.
    def seeded_run(engine_seed: int) -> list[int]:
        sampler, request = Sampler(seed=engine_seed), Request("s", [1], SamplingParams(temperature=1.0, seed=7))
        return [sampler(logits, [request])[0].token_id for _ in range(50)]

    assert seeded_run(1) == seeded_run(2)
    assert len(set(seeded_run(1))) == 4
