"""Check a freshly loaded kernel module against PyTorch before the engine trusts it."""

from __future__ import annotations

from types import ModuleType

import torch
import torch.nn.functional as F


def disagreement(module: ModuleType) -> str | None:
    """None when the kernels agree with PyTorch on small random cases; else what differs."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 100, generator=generator)
    weight = torch.randn(70, 100, generator=generator)
    bias = torch.randn(70, generator=generator)
    if not torch.allclose(module.linear_small_batch(x, weight, bias), F.linear(x, weight, bias), rtol=1e-4, atol=1e-4):
        return "the compiled linear disagrees with F.linear"
    # One sequence of 5 tokens in blocks [2, 0] of 4 slots, 2 key/value heads, 4 query heads.
    k_cache = torch.randn(3, 4, 2, 8, generator=generator)
    v_cache = torch.randn(3, 4, 2, 8, generator=generator)
    q = torch.randn(1, 4, 8, generator=generator)
    out = torch.empty_like(q)
    table = torch.tensor([[2, 0]])
    module.paged_decode_attention(out, q, torch.tensor([0]), k_cache, v_cache, table, torch.tensor([5]), 8**-0.5, 0)
    keys = k_cache[table[0]].reshape(8, 2, 8)[:5].repeat_interleave(2, dim=1).transpose(0, 1)  # (H, L, D)
    values = v_cache[table[0]].reshape(8, 2, 8)[:5].repeat_interleave(2, dim=1).transpose(0, 1)
    expected = F.scaled_dot_product_attention(q.transpose(0, 1), keys, values).transpose(0, 1)
    if not torch.allclose(out, expected, rtol=1e-4, atol=1e-5):
        return "the compiled decode attention disagrees with scaled_dot_product_attention"
    # The last 3 of those 5 tokens as a prefill chunk (head size 16: the kernel's vectors).
    k_cache, v_cache = torch.randn(3, 4, 2, 16, generator=generator), torch.randn(3, 4, 2, 16, generator=generator)
    q = torch.randn(3, 4, 16, generator=generator)
    out = torch.empty_like(q)
    count, first = torch.tensor([3]), torch.tensor([0])
    module.paged_prefill_attention(out, q, k_cache, v_cache, table, first, count, torch.tensor([5]), 16**-0.5, 0)
    keys = k_cache[table[0]].reshape(8, 2, 16)[:5].repeat_interleave(2, dim=1).transpose(0, 1)
    values = v_cache[table[0]].reshape(8, 2, 16)[:5].repeat_interleave(2, dim=1).transpose(0, 1)
    mask = torch.arange(5)[None, :] <= torch.arange(2, 5)[:, None]
    expected = F.scaled_dot_product_attention(q.transpose(0, 1), keys, values, attn_mask=mask).transpose(0, 1)
    if not torch.allclose(out, expected, rtol=1e-4, atol=1e-5):
        return "the compiled prefill attention disagrees with scaled_dot_product_attention"
    logits = torch.randn(3, 37, generator=generator)
    logits[1, [4, 30]] = 9.0  # a tie: the first one counts
    if not torch.equal(module.greedy_tokens(logits), logits.argmax(dim=-1)):
        return "the compiled greedy_tokens disagrees with argmax"
    bitmask = torch.randint(-(2**31), 2**31 - 1, (2, 2), generator=generator, dtype=torch.int32)
    masked = logits.clone()
    module.apply_token_bitmask_(masked, bitmask, torch.tensor([2, 0]))
    bits = (bitmask[:, :, None] >> torch.arange(32, dtype=torch.int32)) & 1
    expected = logits.clone()
    expected[[2, 0]] = expected[[2, 0]].masked_fill(bits.view(2, -1)[:, :37] == 0, float("-inf"))
    if not torch.equal(masked, expected):
        return "the compiled apply_token_bitmask_ disagrees with unpacking the bits"
    hidden, scale = torch.randn(3, 40, generator=generator), torch.randn(40, generator=generator)
    if not torch.allclose(module.rms_norm(hidden, scale, 1e-6), F.rms_norm(hidden, (40,), scale, 1e-6), atol=1e-5):
        return "the compiled rms_norm disagrees with F.rms_norm"
    return None
