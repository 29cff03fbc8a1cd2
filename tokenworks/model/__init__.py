"""The Llama-family model core: config, transformer, checkpoints, tokenizer, chat template."""

from tokenworks.model.checkpoint import load_generation_config, load_model, save_model
from tokenworks.model.config import SUPPORTED_ARCHITECTURES, ModelConfig
from tokenworks.model.presets import PRESETS, preset_config
from tokenworks.model.tokenizer import Tokenizer
from tokenworks.model.transformer import CausalLM

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
