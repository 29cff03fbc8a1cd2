"""Checkpoint IO: exact round trips, and errors that name the tensor or file at fault."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from tokenworks.errors import CheckpointError
from tokenworks.model import CausalLM, load_generation_config, load_model, preset_config, save_model


@pytest.fixture
def saved(tmp_path):
    model = CausalLM(preset_config("nano", 300, eos_token_id=0)).init_weights(seed=7)
    save_model(model, tmp_path, generation_config={"eos_token_id": [0, 2]})
    return model, tmp_path


def test_round_trip_is_bit_exact(saved) -> None:
    model, path = saved
    loaded = load_model(path)
    for (name, expected), (_, actual) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(expected, actual), name
    assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()  # still tied


def test_tied_checkpoint_stores_the_embedding_once(saved) -> None:
    _, path = saved
    names = set(load_file(path / "model.safetensors"))
    assert "lm_head.weight" not in names and "model.embed_tokens.weight" in names
    assert len(names) == 2 + 2 * 9  # embedding, final norm, and 9 tensors per layer


def test_generation_config_is_written(saved) -> None:
    _, path = saved
    assert load_generation_config(path) == {"bos_token_id": None, "eos_token_id": [0, 2], "pad_token_id": None}


def test_load_casts_to_the_requested_dtype(saved) -> None:
    _, path = saved
    assert load_model(path, dtype="bfloat16").dtype == torch.bfloat16


def _rewrite(path, edit) -> None:
    tensors = load_file(path / "model.safetensors")
    edit(tensors)
    save_file(tensors, path / "model.safetensors")


def test_missing_tensor_is_named(saved) -> None:
    _, path = saved
    _rewrite(path, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(CheckpointError, match=r"lacks tensor 'model.layers.1.mlp.up_proj.weight'"):
        load_model(path)


def test_mismatched_shape_is_named(saved) -> None:
    _, path = saved
    _rewrite(path, lambda t: t.update({"model.norm.weight": torch.ones(97)}))  # nano's hidden size is 96
    with pytest.raises(CheckpointError, match=r"'model.norm.weight' has shape \(97,\).*implies \(96,\)"):
        load_model(path)


def test_unexpected_tensor_is_named(saved) -> None:
    _, path = saved
    _rewrite(path, lambda t: t.update({"model.layers.2.mlp.up_proj.weight": torch.ones(1)}))
    with pytest.raises(CheckpointError, match=r"unexpected tensor 'model.layers.2.mlp.up_proj.weight'"):
        load_model(path)


def test_missing_files_are_clear_errors(saved, tmp_path_factory) -> None:
    model, path = saved
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(path / "nowhere")
    (path / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"has neither model.safetensors"):
        load_model(path)
    sharded = tmp_path_factory.mktemp("sharded")
    save_model(model, sharded, max_shard_bytes=20_000)
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    first_shard = sorted(set(index["weight_map"].values()))[0]
    (sharded / first_shard).unlink()
    with pytest.raises(CheckpointError, match=f"shard {first_shard} listed in model.safetensors.index.json"):
        load_model(sharded)


def test_corrupt_weights_are_a_clear_error(saved) -> None:
    _, path = saved
    (path / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_model(path)
