"""Plain generation with the full forward pass: a reference, not the serving path.

Each step reruns the whole sequence (no KV cache), so it is simple and obviously right,
and is what the inference engine's output is checked against. Serving uses
`tokenworks.engine`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from tokenworks.model.transformer import CausalLM


@torch.inference_mode()
def generate_tokens(
    model: CausalLM,
    prompt_ids: Sequence[int],
    max_new_tokens: int,
    temperature: float = 0.0,
    stop_token_ids: Sequence[int] = (),
    seed: int = 0,
) -> Iterator[int]:
    """Yield new token ids one at a time: greedy at temperature 0, else sampled (seeded)."""
    if not prompt_ids:
        raise ValueError("prompt_ids must hold at least one token")
    generator = torch.Generator(device=model.device).manual_seed(seed)
    ids = torch.tensor([list(prompt_ids)], dtype=torch.long, device=model.device)  # (1, T)
    limit = model.config.max_position_embeddings
    for _ in range(max_new_tokens):
        if ids.shape[1] >= limit:
            return
        logits = model(ids)[0, -1].float()  # (vocab,)
        if temperature > 0:
            probabilities = torch.softmax(logits / temperature, dim=-1)
            next_id = int(torch.multinomial(probabilities, 1, generator=generator))
        else:
            next_id = int(logits.argmax())
        yield next_id
        if next_id in stop_token_ids:
            return
        ids = torch.cat([ids, ids.new_tensor([[next_id]])], dim=1)
