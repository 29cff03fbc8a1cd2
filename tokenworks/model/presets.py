"""Named model shapes. The vocabulary size comes from the tokenizer they are paired with.

`tiny` and `small` are the two shapes the engine benchmark measures (issue 5); `nano` is
for tests and the quick demo.
"""

from __future__ import annotations

from typing import Any

from tokenworks.errors import ConfigError
from tokenworks.model.config import ModelConfig

_SHAPE_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads")
PRESETS: dict[str, dict[str, Any]] = {
    name: dict(zip(_SHAPE_KEYS, shape, strict=True))
    for name, shape in {
        "nano": (64, 192, 2, 4, 2),
        "micro": (128, 384, 4, 4, 2),  # ~1.8M parameters with an 8,192-token vocabulary (training candidate)
        "tiny": (256, 768, 6, 4, 2),  # ~6.8M parameters with an 8,192-token vocabulary
        "small": (576, 1536, 30, 9, 3),  # ~110M parameters with a 16k vocabulary
    }.items()
}


def preset_config(name: str, vocab_size: int, **overrides: Any) -> ModelConfig:
    """The config of a named preset for a given vocabulary; overrides replace any field."""
    if name not in PRESETS:
        raise ConfigError(f"unknown model preset {name!r}; choose one of {', '.join(PRESETS)}")
    fields = dict(PRESETS[name], vocab_size=vocab_size, max_position_embeddings=2048, tie_word_embeddings=True)
    fields.update(overrides)
    return ModelConfig(**fields)
