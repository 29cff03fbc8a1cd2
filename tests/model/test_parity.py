"""Logit parity with `transformers` on random tiny models, in both directions."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig, Qwen2Config

from tokenworks.model import CausalLM, ModelConfig, load_model, save_model

TOLERANCE = 1e-4
SHAPE = dict(vocab_size=320, hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4)

HF_CONFIGS = {
    "llama-gqa-tied": lambda: LlamaConfig(**SHAPE, num_key_value_heads=2, tie_word_embeddings=True),
    "llama-bias-llama3-rope": lambda: LlamaConfig(
        **SHAPE,
        num_key_value_heads=1,
        attention_bias=True,
        mlp_bias=True,
        rope_parameters={
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 16,
        },
    ),
    "llama-linear-rope": lambda: LlamaConfig(
        **SHAPE, num_key_value_heads=4, rope_parameters={"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0}
    ),
    "qwen2-bias": lambda: Qwen2Config(**SHAPE, num_key_value_heads=2, tie_word_embeddings=False),
    "mistral-sliding-window": lambda: MistralConfig(**SHAPE, num_key_value_heads=2, head_dim=24, sliding_window=7),
}


def _random_hf_model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    config = HF_CONFIGS[name]()
    config.architectures = [type(config).__name__.replace("Config", "ForCausalLM")]
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="eager")
    with torch.no_grad():  # Hugging Face initialises biases and norms to constants; randomise all
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.1)
    return model.eval()


def _random_ids(vocab_size: int, batch: int = 2, length: int = 19) -> torch.Tensor:
    return torch.randint(0, vocab_size, (batch, length), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("name", sorted(HF_CONFIGS))
def test_transformers_checkpoint_loads_with_equal_logits(name: str, tmp_path) -> None:
    reference = _random_hf_model(name)
    reference.save_pretrained(tmp_path)
    model = load_model(tmp_path)
    ids = _random_ids(model.config.vocab_size)
    with torch.no_grad():
        expected = reference(ids).logits
        actual = model(ids)
    assert actual.shape == expected.shape
    torch.testing.assert_close(actual, expected, atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize("name", sorted(HF_CONFIGS))
def test_tokenworks_checkpoint_loads_in_transformers_with_equal_logits(name: str, tmp_path) -> None:
    config = ModelConfig.from_hf_dict(_random_hf_model(name).config.to_dict())
    model = CausalLM(config).init_weights(seed=3, std=0.1)
    save_model(model, tmp_path)
    reference = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32, attn_implementation="eager")
    assert type(reference).__name__ == config.architecture
    ids = _random_ids(config.vocab_size)
    with torch.no_grad():
        torch.testing.assert_close(model(ids), reference.eval()(ids).logits, atol=TOLERANCE, rtol=0)


def test_sharded_checkpoint_from_transformers_loads(tmp_path) -> None:
    reference = _random_hf_model("qwen2-bias")
    reference.save_pretrained(tmp_path, max_shard_size="100KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    assert len(list(tmp_path.glob("model-*-of-*.safetensors"))) > 1
    ids = _random_ids(reference.config.vocab_size)
    with torch.no_grad():
        torch.testing.assert_close(load_model(tmp_path)(ids), reference(ids).logits, atol=TOLERANCE, rtol=0)


def test_sharded_save_round_trips_in_transformers(tmp_path) -> None:
    config = ModelConfig.from_hf_dict(_random_hf_model("llama-gqa-tied").config.to_dict())
    model = CausalLM(config).init_weights(seed=4)
    save_model(model, tmp_path, max_shard_bytes=60_000)
    shards = sorted(p.name for p in tmp_path.glob("model-*-of-*.safetensors"))
    assert len(shards) >= 2 and shards[0].endswith(f"-of-{len(shards):05d}.safetensors")
    assert not (tmp_path / "model.safetensors").exists()
    reference = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)
    ids = _random_ids(config.vocab_size)
    with torch.no_grad():
        torch.testing.assert_close(load_model(tmp_path)(ids), model(ids), atol=0, rtol=0)
        torch.testing.assert_close(reference(ids).logits, model(ids), atol=TOLERANCE, rtol=0)
