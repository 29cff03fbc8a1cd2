"""The sampler: logits of the requests that sample this step -> one token id each.

In order, as vLLM and OpenAI define them: min_tokens suppresses stop tokens; the
repetition penalty divides positive (multiplies negative) logits of tokens in the prompt
or output; presence and frequency penalties subtract from tokens of the output;
temperature scales; top-k, top-p and min-p mask; then the token is drawn with one uniform
number through the inverse of the row's cumulative distribution, from a per-request
generator where the request has a seed (so its tokens do not depend on what else is in the
batch). Every sampling row goes through each stage together, as one (S, V) tensor. Logprobs
are of the model's raw distribution (before any of this).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from tokenworks.engine.request import Request


@dataclass(slots=True)
class SampledToken:
    token_id: int
    logprobs: dict[int, float] | None  # the sampled token's and the top k, when asked for
    logprob: float | None = None  # the sampled token's alone, when the sampler scores every token


class Sampler:
    def __init__(
        self,
        seed: int = 0,
        device: torch.device | str = "cpu",
        argmax: Callable[[torch.Tensor], torch.Tensor] | None = None,
        score_sampled: bool = False,
    ) -> None:
        """`argmax`: (R, V) logits -> (R,) the index of each row's first largest value, as
        torch.argmax(dim=-1) (the default) gives it; the engine passes a compiled one on CPU.
        `score_sampled`: give every sampled token its logprob (SampledToken.logprob)."""
        self.score_sampled = score_sampled
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self._request_generators: dict[str, torch.Generator] = {}
        self.device = device
        self.argmax = argmax or (lambda logits: logits.argmax(dim=-1))

    def forget(self, request_id: str) -> None:
        self._request_generators.pop(request_id, None)

    def __call__(self, logits: torch.Tensor, requests: list[Request]) -> list[SampledToken]:
        """(R, V) float32 logits, one row per request, -> one sampled token per request."""
        # Plain greedy rows (every step of the offline benchmark): the raw logits' argmax, nothing else.
        if all(_plain_greedy(request) for request in requests):
            chosen = self.argmax(logits)
            scores = self._scores(logits, chosen)
            return [
                SampledToken(token_id, None, score) for token_id, score in zip(chosen.tolist(), scores, strict=True)
            ]
        raw = logits
        if any(_constrained(request) for request in requests):  # else the raw logits serve as they are
            logits = self._apply_constraints(logits.clone(), requests)
        greedy = [i for i, request in enumerate(requests) if request.params.greedy]
        sampled = [i for i, request in enumerate(requests) if not request.params.greedy]
        chosen = [0] * len(requests)
        if greedy:
            picked = self.argmax(logits if len(greedy) == len(requests) else logits[greedy]).tolist()
            for row, token_id in zip(greedy, picked, strict=True):
                chosen[row] = token_id
        if sampled:
            for row, token_id in zip(sampled, self._sample(logits, requests, sampled).tolist(), strict=True):
                chosen[row] = token_id
        logprob_rows = [i for i, request in enumerate(requests) if request.params.logprobs is not None]
        logprobs: dict[int, dict[int, float]] = {}
        if logprob_rows:
            log_softmax = torch.log_softmax(raw[logprob_rows], dim=-1)
            for row, values in zip(logprob_rows, log_softmax, strict=True):
                logprobs[row] = logprob_entry(values, chosen[row], requests[row].params.logprobs)
        scores = self._scores(raw, torch.tensor(chosen, device=raw.device))
        return [
            SampledToken(token_id, logprobs.get(row), score)
            for row, (token_id, score) in enumerate(zip(chosen, scores, strict=True))
        ]

    def _scores(self, raw: torch.Tensor, chosen: torch.Tensor) -> list[float | None]:
        """Each row's chosen token's logprob under the raw logits, or Nones when the sampler does
        not score. One fused log-softmax and a gather: in the engine's step, right after the
        model, each op's dispatch runs cold, and this took 57 us a step at 32 rows of a 512-token
        vocabulary where logit - logsumexp (six ops) took 110 us."""
        if not self.score_sampled:
            return [None] * raw.shape[0]
        return torch.log_softmax(raw, dim=-1).gather(1, chosen[:, None]).view(-1).tolist()

    def _apply_constraints(self, logits: torch.Tensor, requests: list[Request]) -> torch.Tensor:
        for row, request in enumerate(requests):
            params = request.params
            if _suppresses_stops(request):
                stops = set(params.stop_token_ids) | (set() if params.ignore_eos else set(request.eos_token_ids))
                if stops:
                    logits[row, [t for t in stops if t < logits.shape[1]]] = float("-inf")
            if params.uses_penalties:
                self._penalize(logits[row], request)
        return logits

    def _penalize(self, row: torch.Tensor, request: Request) -> None:
        params = request.params
        vocab = row.shape[0]
        if params.repetition_penalty != 1.0:
            seen = torch.tensor(sorted({t for t in request.all_token_ids if t < vocab}), dtype=torch.long)
            values = row[seen]
            row[seen] = torch.where(values > 0, values / params.repetition_penalty, values * params.repetition_penalty)
        if request.output_token_ids and (params.presence_penalty or params.frequency_penalty):
            counts = torch.bincount(torch.tensor(request.output_token_ids), minlength=vocab)[:vocab].to(row.dtype)
            row -= params.frequency_penalty * counts + params.presence_penalty * (counts > 0).to(row.dtype)

    def _sample(self, logits: torch.Tensor, requests: list[Request], rows: list[int]) -> torch.Tensor:
        """Draw a token for each of `rows` (of logits, of requests), all at once: scale, filter,
        then one uniform number per row through the inverse of its cumulative distribution."""
        params = [requests[i].params for i in rows]
        vocab = logits.shape[1]
        # A floor of 0.01 (as vLLM's) keeps logits / temperature finite for any float32 logits.
        temperatures = torch.tensor([max(p.temperature, 0.01) for p in params], device=logits.device)
        # Scaled into a buffer padded to whole blocks of the inverse CDF, the padding never drawn.
        scaled = logits.new_full((len(rows), -(-vocab // CDF_BLOCK) * CDF_BLOCK), float("-inf"))
        torch.div(
            logits if len(rows) == logits.shape[0] else logits[rows], temperatures[:, None], out=scaled[:, :vocab]
        )
        probabilities = filtered_probabilities(scaled, params, vocab)
        if any(p.seed is not None for p in params):
            uniforms = torch.cat([self._uniform(requests[row]) for row in rows])
        else:  # one draw for the whole batch
            uniforms = torch.rand(len(rows), generator=self.generator, dtype=torch.float64, device=self.device)
        return inverse_cdf(probabilities, uniforms)

    def _uniform(self, request: Request) -> torch.Tensor:
        """One uniform number in [0, 1) from the request's generator (or the shared one): a seeded
        request draws exactly one per token, so its tokens do not depend on the batch."""
        return torch.rand(1, generator=self._generator_for(request), dtype=torch.float64, device=self.device)

    def _generator_for(self, request: Request) -> torch.Generator:
        if request.params.seed is None:
            return self.generator
        generator = self._request_generators.get(request.request_id)
        if generator is None:
            generator = torch.Generator(device=self.device).manual_seed(request.params.seed)
            self._request_generators[request.request_id] = generator
        return generator


def logprob_entry(log_softmax: torch.Tensor, token_id: int, top: int) -> dict[int, float]:
    """One position's logprobs: the token's, then the `top` likeliest tokens' (vLLM's and
    OpenAI's shape: the token appears once, first, whether or not it is among the top)."""
    entry = {token_id: float(log_softmax[token_id])}
    if top:
        best = log_softmax.topk(top)
        entry.update(zip(best.indices.tolist(), best.values.tolist(), strict=True))
    return entry


def score_tokens(logits: torch.Tensor, token_ids: list[int], top: int) -> tuple[list[dict[int, float]], list[int]]:
    """(n, V) logits of n positions and the token that followed each -> each token's logprob
    entry (logprob_entry) and its rank in the vocabulary (1: the likeliest)."""
    log_softmax = torch.log_softmax(logits, dim=-1)
    targets = torch.tensor(token_ids, device=logits.device)
    chosen = log_softmax.gather(1, targets[:, None])  # (n, 1)
    ranks = ((log_softmax > chosen).sum(dim=-1) + 1).tolist()
    entries = [logprob_entry(row, token_id, top) for row, token_id in zip(log_softmax, token_ids, strict=True)]
    return entries, ranks


def _plain_greedy(request: Request) -> bool:
    """Greedy, without logprobs, and nothing changes its logits: the raw logits' argmax is the token."""
    params = request.params
    return params.greedy and params.logprobs is None and not _constrained(request)


def _suppresses_stops(request: Request) -> bool:
    return len(request.output_token_ids) < request.params.min_tokens


def _constrained(request: Request) -> bool:
    """Whether min_tokens or a penalty changes this request's logits this step."""
    return _suppresses_stops(request) or request.params.uses_penalties


# Top-p first looks among this many most likely tokens (a partial sort); only a row whose
# mass there falls short of its p (a flat distribution) sorts its whole vocabulary.
TOP_P_CANDIDATES = 1024
CDF_BLOCK = 1024  # tokens per block of the sampler's two-level cumulative sums
ONE_LEVEL_TOKENS = 16 * CDF_BLOCK  # up to this vocabulary one level is cheaper (fewer ops)


def filtered_probabilities(scaled: torch.Tensor, params: list, vocab: int) -> torch.Tensor:
    """(S, W) temperature-scaled logits of a `vocab`-token vocabulary (W >= vocab: any columns
    past it are -inf padding) -> each row's probabilities after its top-k, top-p and min-p, in
    that order (vLLM's), removed tokens at exactly 0, the rest not renormalized (the sampler
    draws against each row's total)."""
    top_ks = [p.top_k if 0 < p.top_k < vocab else 0 for p in params]
    if any(top_ks):
        ranked = scaled.topk(max(top_ks), dim=-1).values  # (S, k_max), largest first
        kth = torch.tensor([max(k, 1) - 1 for k in top_ks], device=scaled.device)[:, None]
        thresholds = ranked.gather(1, kth).masked_fill_(
            torch.tensor(top_ks, device=scaled.device)[:, None] == 0, float("-inf")
        )
        scaled = scaled.masked_fill(scaled < thresholds, float("-inf"))
    probabilities = torch.softmax(scaled, dim=-1)
    for row, p in enumerate(params):
        if p.top_p < 1.0:
            probabilities[row] = _top_p(probabilities[row], p.top_p)
    min_ps = [p.min_p for p in params]
    if any(min_ps):  # a ratio to the most likely token, so the top-p renormalization would not change it
        floors = torch.tensor(min_ps, device=scaled.device)[:, None] * probabilities.max(dim=-1, keepdim=True).values
        probabilities = probabilities.masked_fill(probabilities < floors, 0.0)
    return probabilities


def _top_p(probabilities: torch.Tensor, top_p: float) -> torch.Tensor:
    """One row: keep the most likely tokens until their mass reaches top_p (the token that crosses
    it included), zero the rest."""
    count = min(TOP_P_CANDIDATES, probabilities.shape[0])
    target = top_p * float(probabilities.sum())
    values, indices = probabilities.topk(count)
    if count < probabilities.shape[0] and float(values.sum()) < target:
        return _top_p_flat(probabilities, target)
    keep = values.cumsum(0) - values < target
    return torch.zeros_like(probabilities).index_put_((indices[keep],), values[keep])


def _top_p_flat(probabilities: torch.Tensor, target: float) -> torch.Tensor:
    """Top-p of a row whose likeliest tokens hold little mass (a flat distribution), without
    sorting the row (14 ms at a 152k vocabulary): non-negative floats order as their bit
    patterns do, so the top 16 bits (exponent and 7 mantissa bits) bucket the tokens in order.
    Whole buckets above the one where the mass crosses the target are kept; only that bucket's
    tokens are sorted."""
    buckets = probabilities.view(torch.int32) >> 16  # 0 .. 32767, ordered as the values
    mass = torch.zeros(1 << 15, dtype=torch.float64).index_add_(0, buckets, probabilities.to(torch.float64))
    above = mass.flip(0).cumsum(0).flip(0) - mass  # the mass of every higher bucket
    crossing = int(torch.nonzero(above < target).min())  # the lowest bucket whose higher ones fall short
    inside = buckets == crossing
    values = probabilities[inside].sort(descending=True).values
    kept = values[values.cumsum(0) - values + float(above[crossing]) < target]
    keep = (buckets > crossing) | (inside & (probabilities >= kept[-1]))
    return probabilities.masked_fill(~keep, 0.0)


def inverse_cdf(probabilities: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """(S, V) unnormalized probabilities, V a multiple of CDF_BLOCK, and (S,) uniforms in [0, 1)
    -> (S,) token ids: the token where each row's cumulative mass first exceeds uniform x total,
    a token of zero probability never. One random number per row, where torch.multinomial draws
    one per token of the vocabulary (0.2 ms a row at 8k tokens, 3 ms at 150k). Cumulative sums
    are float64; over a large vocabulary they run in two levels, the blocks' masses and then the
    tokens of the one block the draw lands in (one float64 cumsum over 150k tokens costs 1 ms)."""
    rows, width = probabilities.shape
    if width <= ONE_LEVEL_TOKENS:
        return _first_exceeding(probabilities, uniforms * probabilities.sum(dim=-1, dtype=torch.float64))
    grid = probabilities.view(rows, width // CDF_BLOCK, CDF_BLOCK)
    block_mass = grid.sum(dim=-1)  # (S, blocks)
    block_cdf = block_mass.to(torch.float64).cumsum(dim=-1)
    targets = uniforms * block_cdf[:, -1]
    block = _first_exceeding(block_mass, targets)
    before = block_cdf.gather(1, (block - 1).clamp(min=0)[:, None])[:, 0].masked_fill(block == 0, 0.0)
    inside = grid[torch.arange(rows, device=grid.device), block]  # (S, CDF_BLOCK)
    return block * CDF_BLOCK + _first_exceeding(inside, targets - before)


def _first_exceeding(masses: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(S, N) masses, (S,) float64 targets -> (S,) the first index where each row's cumulative
    mass exceeds its target. Float64 rounding can put a target at or past a row's total; it then
    takes the row's last index with mass, never one without."""
    cumulative = masses.to(torch.float64).cumsum(dim=-1)
    chosen = torch.searchsorted(cumulative, targets.to(cumulative.device)[:, None], right=True)[:, 0]
    return torch.minimum(chosen, _last_positive(masses))


def _last_positive(values: torch.Tensor) -> torch.Tensor:
    """(S, N) -> (S,) the index of each row's last entry above zero."""
    positions = torch.arange(values.shape[1], device=values.device)
    return torch.where(values > 0, positions, -1).amax(dim=-1)
