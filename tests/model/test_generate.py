"""The reference generation loop against transformers' greedy generate."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM

from tokenworks.model import CausalLM, preset_config, save_model
from tokenworks.model.generate import generate_tokens


def test_greedy_tokens_equal_transformers_generate(tmp_path) -> None:
    model = CausalLM(preset_config("nano", 256)).init_weights(seed=11, std=0.3)
    save_model(model, tmp_path)
    reference = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    prompt = [5, 17, 99, 3, 250]
    ours = list(generate_tokens(model, prompt, max_new_tokens=20))
    theirs = reference.generate(
        torch.tensor([prompt]), max_new_tokens=20, do_sample=False, eos_token_id=None, pad_token_id=0
    )[0, len(prompt) :].tolist()
    assert ours == theirs
    assert len(set(ours)) > 1  # a model whose output varies, so the comparison means something


def test_generation_stops_at_a_stop_token_and_is_seeded() -> None:
    model = CausalLM(preset_config("nano", 64)).init_weights(seed=2, std=0.5)
    sampled = list(generate_tokens(model, [1, 2, 3], 30, temperature=1.0, seed=9))
    assert sampled == list(generate_tokens(model, [1, 2, 3], 30, temperature=1.0, seed=9))
    stop = sampled[4]
    stopped = list(generate_tokens(model, [1, 2, 3], 30, temperature=1.0, seed=9, stop_token_ids=[stop]))
    assert stopped == sampled[: sampled.index(stop) + 1]
