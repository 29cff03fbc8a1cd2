"""EngineOptions.score_sampled_tokens: every sampled token's logprob under the raw distribution,
on the plain greedy path and the full one alike, and each request's sum and minimum of them."""

from __future__ import annotations

import pytest
import torch

from tokenworks.engine.request import Request
from tokenworks.engine.sampler import Sampler
from tokenworks.engine.sampling_params import SamplingParams

LOGITS = torch.tensor([[0.0, 2.0, 1.0], [3.0, 0.0, 1.0]])
RAW = torch.log_softmax(LOGITS, dim=-1)


def request(name: str, **params) -> Request:
    return Request(name, [1], SamplingParams(**params), eos_token_ids=frozenset({9}))


def test_plain_greedy_rows_get_their_tokens_logprobs_only_when_the_sampler_scores() -> None:
    rows = [request("a", temperature=0.0), request("b", temperature=0.0)]
    tokens = Sampler(seed=0, score_sampled=True)(LOGITS, rows)
    assert [(t.token_id, t.logprobs) for t in tokens] == [(1, None), (0, None)]
    assert [t.logprob for t in tokens] == pytest.approx([float(RAW[0, 1]), float(RAW[1, 0])], abs=1e-6)
    assert [t.logprob for t in Sampler(seed=0)(LOGITS, rows)] == [None, None]


def test_sampled_and_penalised_rows_are_scored_under_the_raw_logits() -> None:
    rows = [
        request("a", temperature=1.0, seed=3),
        request("b", temperature=0.0, presence_penalty=2.0, frequency_penalty=1.0, logprobs=0),
    ]
    rows[1].append_output_token(0)  # the penalty moves row b's choice from token 0 to token 2
    tokens = Sampler(seed=0, score_sampled=True)(LOGITS.clone(), rows)
    assert tokens[1].token_id == 2
    for row, token in enumerate(tokens):
        assert token.logprob == pytest.approx(float(RAW[row, token.token_id]), abs=1e-6)
    assert tokens[1].logprobs == pytest.approx({2: tokens[1].logprob})


def test_a_request_keeps_the_sum_and_minimum_of_its_scores() -> None:
    scored = request("a", temperature=0.0)
    assert (scored.cumulative_logprob, scored.min_logprob) == (None, None)
    for value in (-0.5, -2.0, -1.0):
        scored.score(value)
    assert (scored.cumulative_logprob, scored.min_logprob) == (-3.5, -2.0)
