"""The decoder-only transformer and its language-model head.

`CausalLM` mirrors Hugging Face's module tree (`model.embed_tokens`, `model.layers.N...`,
`model.norm`, `lm_head`) so its state dict is a checkpoint's tensor map, name for name.
"""

from __future__ import annotations

import torch
from torch import nn

from tokenworks.model.config import ModelConfig
from tokenworks.model.layers import MLP, Attention, RMSNorm, RotaryEmbedding


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask)
        return x + self.mlp(self.post_attention_layernorm(x))


class Transformer(nn.Module):
    """Embeddings, decoder layers and the final norm: token ids in, hidden states out."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary = RotaryEmbedding(config)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        # input_ids: (B, T) -> hidden states (B, T, hidden_size)
        length = input_ids.shape[1]
        if positions is None:
            positions = torch.arange(length, device=input_ids.device).expand_as(input_ids)
        x = self.embed_tokens(input_ids)
        cos, sin = self.rotary(positions, x.dtype)
        mask = self._attention_mask(length, input_ids.device)
        for layer in self.layers:
            x = layer(x, cos, sin, mask)
        return self.norm(x)

    def _attention_mask(self, length: int, device: torch.device) -> torch.Tensor | None:
        """None for plain causal attention, else (T, T) booleans with the sliding window applied."""
        window = self.config.sliding_window
        if window is None or window >= length:
            return None
        offsets = torch.arange(length, device=device)
        distance = offsets[:, None] - offsets[None, :]  # query position - key position
        return (distance >= 0) & (distance < window)


class CausalLM(nn.Module):
    """The transformer with its language-model head: token ids in, next-token logits out."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.model = Transformer(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        # input_ids: (B, T) -> logits (B, T, vocab_size)
        return self.lm_head(self.model(input_ids, positions))

    def init_weights(self, seed: int = 0, std: float = 0.02) -> CausalLM:
        """Fresh random weights: normal(0, std) for matrices, ones for norms, zeros for biases."""
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, parameter in self.named_parameters():
                if name.endswith("layernorm.weight") or name.endswith("norm.weight"):
                    parameter.fill_(1.0)
                elif name.endswith(".bias"):
                    parameter.zero_()
                else:
                    noise = torch.randn(parameter.shape, generator=generator, dtype=torch.float32) * std
                    parameter.copy_(noise)
        return self

    @property
    def device(self) -> torch.device:
        return self.lm_head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.lm_head.weight.dtype
