"""The fast mode's requests: token counts per request, and the prompt tokens each finds cached.

Two sources. A bench workload with the model's tokenizer (`from_prompts`): the very prompt ids
the exact mode sends (prompts.py), their lengths, and the cached tokens estimated from their
blocks: a prompt's leading full blocks that an earlier prompt also had (chained, as the engine's
block hashes chain), at least one token left to compute, as if the cache kept every block (it
does while the cache is larger than the prompts in flight; eviction is not modelled). Or a
traffic forecast (`from_lengths`): counts drawn from the bench's length distributions, the cached
tokens a given fraction of each prompt, in whole blocks.
"""

from __future__ import annotations

import random

import numpy as np

from tokenworks.bench.workloads import LengthDistribution, WorkloadOptions, build_workload
from tokenworks.errors import PlanError
from tokenworks.plan.fast import FastRequests
from tokenworks.plan.prompts import SimPrompts
from tokenworks.router.prefix_index import block_keys


def from_prompts(
    workload: WorkloadOptions, prompts: SimPrompts, count: int, block_size: int, seed: int = 0,
    prefix_caching: bool = True,
) -> FastRequests:  # fmt: skip
    """The first `count` requests of a bench workload, as the exact mode would send them."""
    workload.validate()
    if workload.kind == "multi-turn":
        raise PlanError("the fast mode does not replay multi-turn conversations (each turn waits for a reply's text); "
                        "use --mode exact")  # fmt: skip
    specs = build_workload(workload, seed, prompts.counter).take(count)
    if any(spec.max_tokens is None for spec in specs):
        raise PlanError("the simulator needs each request's output length: give --output-tokens")
    ids = prompts.prompt_ids_of(specs)
    cached = cached_blocks(ids, block_size) if prefix_caching else [0] * len(ids)
    return FastRequests(
        np.array([len(prompt) for prompt in ids], dtype=np.int64),
        np.array([spec.max_tokens for spec in specs], dtype=np.int64),
        np.array(cached, dtype=np.int64),
    )


def cached_blocks(prompts: list[list[int]], block_size: int) -> list[int]:
    """Per prompt, the tokens of its leading full blocks that an earlier prompt had (at least one
    token left to compute)."""
    seen: set[int] = set()
    cached = []
    for ids in prompts:
        hits, hitting = 0, True
        for key in block_keys(ids, block_size):  # the router's keys: a key stands for its whole prefix
            if hitting and key in seen:
                hits += 1
            else:
                hitting = False
                seen.add(key)
        tokens = hits * block_size
        cached.append(tokens - block_size if tokens >= len(ids) else tokens)
    return cached


def from_lengths(
    input_tokens: str | LengthDistribution, output_tokens: str | LengthDistribution, count: int,
    block_size: int, prefix_hit_rate: float = 0.0, seed: int = 0,
) -> FastRequests:  # fmt: skip
    """`count` requests with lengths drawn as the bench draws them (`--input-tokens 1024`,
    `512:2048`, `normal:1024,128`), `prefix_hit_rate` of each prompt cached, in whole blocks."""
    if not 0 <= prefix_hit_rate < 1:
        raise PlanError(f"the prefix hit rate is a fraction in [0, 1), got {prefix_hit_rate}")
    inputs = _draw(input_tokens, count, random.Random(seed))
    outputs = _draw(output_tokens, count, random.Random(seed + 1))
    cached = (np.floor(inputs * prefix_hit_rate / block_size) * block_size).astype(np.int64)
    cached = np.minimum(cached, (inputs - 1) // block_size * block_size)
    return FastRequests(inputs, outputs, cached)


def _draw(distribution: str | LengthDistribution, count: int, rng: random.Random) -> np.ndarray:
    if isinstance(distribution, str):
        from tokenworks.errors import BenchError

        try:
            distribution = LengthDistribution.parse(distribution)
        except BenchError as error:
            raise PlanError(str(error)) from None
    if distribution.kind == "fixed":
        return np.full(count, int(distribution.a), dtype=np.int64)
    return np.array([distribution.sample(rng) for _ in range(count)], dtype=np.int64)
