"""The work of one engine step: its floating-point operations and the bytes it moves.

Pure arithmetic on the model's shape (`ModelConfig`) and the step's shape (`StepShape`); the
latency models turn it into seconds. With h = hidden size, L = layers, q = heads x head_dim,
kv = KV heads x head_dim, I = intermediate size, V = vocabulary, N = the step's tokens, S = the
rows that sample, and per chunk n new tokens after c tokens of context:

    linear FLOPs     = 2 x P x N,  P = L x (h q + 2 h kv + q h + 3 h I)   (q, k, v, o; gate, up, down)
    attention FLOPs  = 4 x head_dim x heads x L x sum over chunks of keys(n, c)
                       keys(n, c) = n c + n (n + 1) / 2                     (causal within the chunk;
                       QK^T and AV are 2 head_dim FLOPs each per query and key)
    LM head FLOPs    = 2 x h x V x S
    weight bytes     = P x w  +  (V x h x w if S > 0)  +  N x h x w        (the embedding rows)
    KV read bytes    = 2 x L x kv x b x sum over chunks of (c + n)          (K and V, once per layer)
    KV write bytes   = 2 x L x kv x b x N

with w the bytes of a weight and b of a cached K or V element. Weights are read once a step
however many tokens share them: that is why decode batches well. Biases, norms, rotary
embeddings and activations between layers are left out (a few parts in a thousand of the
FLOPs of these models; the fitted overheads absorb them). Under tensor parallelism each GPU does
1/tp of every term but the embedding rows (heads and the MLP split; the LM head too, as vLLM
splits the vocabulary).
With a sliding window W a query sees at most W keys and a chunk reads at most W + n cached ones.
"""

from __future__ import annotations

from dataclasses import dataclass

from tokenworks.model.config import ModelConfig
from tokenworks.plan.step import StepShape

# Bytes of one element by dtype name, as config.json and the catalog spell them.
DTYPE_BYTES = {"float32": 4.0, "float16": 2.0, "bfloat16": 2.0, "bf16": 2.0, "fp16": 2.0, "fp8": 1.0, "fp4": 0.5}


@dataclass(frozen=True, slots=True)
class StepCost:
    linear_flops: float
    attention_flops: float
    lm_head_flops: float
    weight_bytes: float
    kv_read_bytes: float
    kv_write_bytes: float

    @property
    def flops(self) -> float:
        return self.linear_flops + self.attention_flops + self.lm_head_flops

    @property
    def bytes(self) -> float:
        return self.weight_bytes + self.kv_read_bytes + self.kv_write_bytes


def dtype_bytes(name: str) -> float:
    if name not in DTYPE_BYTES:
        raise ValueError(f"unknown dtype {name!r}; use one of {', '.join(DTYPE_BYTES)}")
    return DTYPE_BYTES[name]


def linear_parameters(config: ModelConfig) -> int:
    """P: the parameters of every layer's projections, each multiplied by every token of a step."""
    h, q = config.hidden_size, config.num_attention_heads * config.head_dim
    kv = config.num_key_value_heads * config.head_dim
    return config.num_hidden_layers * (h * q + 2 * h * kv + q * h + 3 * h * config.intermediate_size)


def attended_keys(tokens: int, context: int, window: int | None = None) -> int:
    """Sum over a chunk's queries of the keys each sees: query i (0-based) sees context + i + 1,
    at most `window`."""
    first, last = context + 1, context + tokens
    if window is None or last <= window:
        return (first + last) * tokens // 2
    below = max(0, window - first + 1)  # queries that see fewer than `window` keys
    return (first + first + below - 1) * below // 2 + (tokens - below) * window


def chunk_totals(chunks: tuple[tuple[int, int], ...], window: int | None = None) -> tuple[int, int, int]:
    """(tokens, keys attended, K and V rows read) summed over a step's (new, context) chunks, in
    one pass: a step's cost depends on its chunks only through these (and the rows that sample)."""
    tokens = keys = reads = 0
    for n, c in chunks:
        tokens += n
        keys += attended_keys(n, c, window)
        reads += n + (c if window is None or c < window else window)
    return tokens, keys, reads


def step_cost(
    config: ModelConfig,
    step: StepShape,
    weight_bytes: float | None = None,
    kv_bytes: float | None = None,
    tp: int = 1,
) -> StepCost:
    """FLOPs and bytes of one step on each of `tp` GPUs; element sizes default to the config's dtype."""
    tokens, keys, reads = chunk_totals(step.chunks, config.sliding_window)
    return totals_cost(
        config, tokens=tokens, samples=step.num_samples, keys=keys, reads=reads,
        weight_bytes=weight_bytes, kv_bytes=kv_bytes, tp=tp,
    )  # fmt: skip


def totals_cost(
    config: ModelConfig, *, tokens: int, samples: int, keys: int, reads: int,
    weight_bytes: float | None = None, kv_bytes: float | None = None, tp: int = 1,
) -> StepCost:  # fmt: skip
    """`step_cost` from a step's `chunk_totals` and its sampling rows (by name: four counts in a
    row are easy to swap)."""
    w = dtype_bytes(config.dtype) if weight_bytes is None else weight_bytes
    b = w if kv_bytes is None else kv_bytes
    h, layers = config.hidden_size, config.num_hidden_layers
    kv = config.num_key_value_heads * config.head_dim
    params = linear_parameters(config)
    head = config.vocab_size * h
    return StepCost(
        linear_flops=2 * params * tokens / tp,
        attention_flops=4 * config.head_dim * config.num_attention_heads * layers * keys / tp,
        lm_head_flops=2 * head * samples / tp,
        weight_bytes=(params * w + (head * w if samples else 0)) / tp + tokens * h * w,
        kv_read_bytes=2 * layers * kv * b * reads / tp,
        kv_write_bytes=2 * layers * kv * b * tokens / tp,
    )
