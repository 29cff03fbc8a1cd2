"""ModelConfig <-> Hugging Face config.json, and the errors for configs we cannot run."""

from __future__ import annotations

import json

import pytest

from tokenworks.errors import CheckpointError, ConfigError
from tokenworks.model import ModelConfig, preset_config

LLAMA = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "vocab_size": 128,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": True,
}


def test_transformers_4_rope_layout_is_read() -> None:
    legacy = {**LLAMA, "rope_theta": 500000.0, "rope_scaling": {"type": "linear", "factor": 4.0}}
    config = ModelConfig.from_hf_dict(legacy)
    assert config.rope_theta == 500000.0
    assert config.rope_scaling == {"rope_type": "linear", "factor": 4.0}


def test_transformers_5_rope_layout_is_read() -> None:
    config = ModelConfig.from_hf_dict({**LLAMA, "rope_parameters": {"rope_type": "default", "rope_theta": 1e6}})
    assert (config.rope_theta, config.rope_scaling) == (1e6, None)


def test_round_trip_keeps_every_field_and_unknown_keys(tmp_path) -> None:
    config = ModelConfig.from_hf_dict({**LLAMA, "initializer_range": 0.01, "eos_token_id": [5, 6]})
    assert config.head_dim == 16 and config.eos_token_ids == [5, 6]
    config.save(tmp_path)
    written = json.loads((tmp_path / "config.json").read_text())
    assert written["initializer_range"] == 0.01
    assert written["rope_parameters"] == {"rope_type": "default", "rope_theta": 10000.0}
    assert ModelConfig.load(tmp_path) == config


def test_architecture_specific_fields() -> None:
    qwen = ModelConfig.from_hf_dict({**LLAMA, "architectures": ["Qwen2ForCausalLM"], "sliding_window": 32})
    assert (qwen.qkv_bias, qwen.o_bias, qwen.sliding_window) == (True, False, None)
    mistral = ModelConfig.from_hf_dict({**LLAMA, "architectures": ["MistralForCausalLM"], "sliding_window": 32})
    assert (mistral.qkv_bias, mistral.sliding_window) == (False, 32)
    llama = ModelConfig.from_hf_dict({**LLAMA, "attention_bias": True})
    assert (llama.qkv_bias, llama.o_bias) == (True, True)


def test_parameter_count_of_the_tiny_preset() -> None:
    # 6 layers x (attention 256*256*2 + 256*128*2, MLP 3*256*768, norms 2*256) + tied 8192*256 + final norm
    expected = 6 * (2 * 256 * 256 + 2 * 256 * 128 + 3 * 256 * 768 + 2 * 256) + 8192 * 256 + 256
    assert preset_config("tiny", 8192).num_parameters() == expected == 6_819_072


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        ({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}, "unsupported architecture GPT2LMHeadModel"),
        ({"hidden_act": "gelu"}, "hidden_act 'gelu' is not supported"),
        ({"num_key_value_heads": 3}, "must be a multiple of"),
        ({"rope_scaling": {"rope_type": "yarn", "factor": 2.0}}, "rope scaling type 'yarn'"),
        ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "needs low_freq_factor"),
        ({"quantization_config": {"quant_method": "gptq"}}, "quantized checkpoints"),
        ({"vocab_size": None}, None),
    ],
)
def test_unrunnable_configs_are_clear_errors(change: dict, complaint: str | None) -> None:
    hf = {**LLAMA, **change}
    if complaint is None:  # a required key missing entirely
        del hf["vocab_size"]
        complaint = "lacks the required key 'vocab_size'"
    with pytest.raises(ConfigError, match=complaint):
        ModelConfig.from_hf_dict(hf)


def test_unknown_preset_and_missing_directory(tmp_path) -> None:
    with pytest.raises(ConfigError, match="unknown model preset 'huge'"):
        preset_config("huge", 100)
    with pytest.raises(CheckpointError, match=r"config.json not found"):
        ModelConfig.load(tmp_path)
