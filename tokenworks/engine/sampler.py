"""The sampler: logits of the requests that sample this step -> one token id each.

In order, as vLLM and OpenAI define them: min_tokens suppresses stop tokens; the
repetition penalty divides positive (multiplies negative) logits of tokens in the prompt
or output; presence and frequency penalties subtract from tokens of the output;
temperature scales; top-k, top-p and min-p mask; then the token is drawn, from a
per-request generator where the request has a seed (so its tokens do not depend on what
else is in the batch). Logprobs are of the model's raw distribution (before any of this).
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


class Sampler:
    def __init__(
        self,
        seed: int = 0,
        device: torch.device | str = "cpu",
        argmax: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        """`argmax`: (R, V) logits -> (R,) the index of each row's first largest value, as
        torch.argmax(dim=-1) (the default) gives it; the engine passes a compiled one on CPU."""
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
            return [SampledToken(token_id, None) for token_id in self.argmax(logits).tolist()]
        raw = logits
        if any(_constrained(request) for request in requests):  # else the raw logits serve as they are
            logits = self._apply_constraints(logits.clone(), requests)
        greedy = [request.params.greedy for request in requests]
        token_ids = self.argmax(logits)
        if not all(greedy):
            token_ids = self._sample(logits, requests, greedy, token_ids)
        chosen = token_ids.tolist()
        logprob_rows = [i for i, request in enumerate(requests) if request.params.logprobs is not None]
        logprobs: dict[int, dict[int, float]] = {}
        if logprob_rows:
            log_softmax = torch.log_softmax(raw[logprob_rows], dim=-1)
            for row, values in zip(logprob_rows, log_softmax, strict=True):
                top = values.topk(requests[row].params.logprobs) if requests[row].params.logprobs else None
                entry = {chosen[row]: float(values[chosen[row]])}
                if top is not None:
                    entry.update(zip(top.indices.tolist(), top.values.tolist(), strict=True))
                logprobs[row] = entry
        return [SampledToken(token_id, logprobs.get(row)) for row, token_id in enumerate(chosen)]

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

    def _sample(
        self, logits: torch.Tensor, requests: list[Request], greedy: list[bool], token_ids: torch.Tensor
    ) -> torch.Tensor:
        rows = [i for i, is_greedy in enumerate(greedy) if not is_greedy]
        selected = logits[rows]
        # A floor of 0.01 (as vLLM's) keeps logits / temperature finite for any float32 logits.
        temperatures = torch.tensor([max(requests[i].params.temperature, 0.01) for i in rows], device=logits.device)
        selected = selected / temperatures[:, None]
        for position, row in enumerate(rows):
            selected[position] = _filter(selected[position], requests[row].params)
        probabilities = torch.softmax(selected, dim=-1)
        for position, row in enumerate(rows):
            generator = self._generator_for(requests[row])
            token_ids[row] = torch.multinomial(probabilities[position], 1, generator=generator)[0]
        return token_ids

    def _generator_for(self, request: Request) -> torch.Generator:
        if request.params.seed is None:
            return self.generator
        generator = self._request_generators.get(request.request_id)
        if generator is None:
            generator = torch.Generator(device=self.device).manual_seed(request.params.seed)
            self._request_generators[request.request_id] = generator
        return generator


def _plain_greedy(request: Request) -> bool:
    """Greedy, without logprobs, and nothing changes its logits: the raw logits' argmax is the token."""
    params = request.params
    return params.greedy and params.logprobs is None and not _constrained(request)


def _suppresses_stops(request: Request) -> bool:
    return len(request.output_token_ids) < request.params.min_tokens


def _constrained(request: Request) -> bool:
    """Whether min_tokens or a penalty changes this request's logits this step."""
    return _suppresses_stops(request) or request.params.uses_penalties


def _filter(logits: torch.Tensor, params) -> torch.Tensor:
    """Top-k, then top-p, then min-p, on one row of temperature-scaled logits."""
    if params.top_k > 0 and params.top_k < logits.shape[0]:
        threshold = logits.topk(params.top_k).values[-1]
        logits = logits.masked_fill(logits < threshold, float("-inf"))
    if params.top_p < 1.0:
        sorted_logits, order = logits.sort(descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        remove = cumulative - sorted_logits.softmax(-1) >= params.top_p  # keep the token that crosses p
        logits = logits.masked_fill(torch.zeros_like(remove).scatter(0, order, remove), float("-inf"))
    if params.min_p > 0.0:
        probabilities = logits.softmax(-1)
        logits = logits.masked_fill(probabilities < params.min_p * probabilities.max(), float("-inf"))
    return logits
