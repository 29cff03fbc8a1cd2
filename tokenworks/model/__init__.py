"""The Llama-family model core: config, transformer, checkpoints, tokenizer, chat template.

Names are imported on first use, so `from tokenworks.model.tokenizer import Tokenizer`
(the data stages, the HTTP process) does not pay for importing torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "CausalLM": "tokenworks.model.transformer",
    "ModelConfig": "tokenworks.model.config",
    "SUPPORTED_ARCHITECTURES": "tokenworks.model.config",
    "PRESETS": "tokenworks.model.presets",
    "preset_config": "tokenworks.model.presets",
    "Tokenizer": "tokenworks.model.tokenizer",
    "load_generation_config": "tokenworks.model.checkpoint",
    "load_model": "tokenworks.model.checkpoint",
    "save_model": "tokenworks.model.checkpoint",
}
__all__ = [
    "PRESETS",
    "SUPPORTED_ARCHITECTURES",
    "CausalLM",
    "ModelConfig",
    "Tokenizer",
    "load_generation_config",
    "load_model",
    "preset_config",
    "save_model",
]

if TYPE_CHECKING:
    from tokenworks.model.checkpoint import load_generation_config, load_model, save_model
    from tokenworks.model.config import SUPPORTED_ARCHITECTURES, ModelConfig
    from tokenworks.model.presets import PRESETS, preset_config
    from tokenworks.model.tokenizer import Tokenizer
    from tokenworks.model.transformer import CausalLM


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'tokenworks.model' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
