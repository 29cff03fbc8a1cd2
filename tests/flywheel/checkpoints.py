"""Tiny checkpoints for the registry's tests: nano-preset weights, no tokenizer (the registry reads none)."""

from __future__ import annotations

from pathlib import Path

from tokenworks.model import CausalLM, preset_config, save_model

VOCAB = 256


def make_checkpoint(directory: Path, seed: int = 0, **shape: int) -> Path:
    config = preset_config("nano", VOCAB, **shape)
    save_model(CausalLM(config).init_weights(seed=seed, std=0.02), directory)
    return directory
