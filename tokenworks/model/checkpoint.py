"""Hugging Face checkpoint IO: config.json, (sharded) safetensors and generation_config.json.

What tokenworks saves, `transformers` and vLLM load, and the reverse. Every way a directory
can fail to match its config is a CheckpointError that names the tensor or file at fault.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from tokenworks.errors import CheckpointError, ConfigError
from tokenworks.model.config import ModelConfig
from tokenworks.model.transformer import CausalLM

logger = logging.getLogger(__name__)

WEIGHTS_NAME = "model.safetensors"
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
GENERATION_CONFIG_NAME = "generation_config.json"
# Tensors some exporters write that carry no learned state; accepted and ignored on load.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    name = dtype.removeprefix("torch.")
    if name not in _DTYPES:
        raise ConfigError(f"dtype {dtype!r} is not supported; use one of {', '.join(_DTYPES)}")
    return _DTYPES[name]


def load_model(
    model_dir: str | Path, dtype: str | torch.dtype | None = None, device: str | torch.device = "cpu"
) -> CausalLM:
    """Build the model a Hugging Face directory describes and load its weights, in eval mode."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise CheckpointError(f"model directory {model_dir} does not exist")
    config = ModelConfig.load(model_dir)
    torch_dtype = resolve_dtype(dtype or config.dtype)
    with torch.device(device):
        model = CausalLM(config)
    load_weights(model, iter_tensors(model_dir))
    return model.to(torch_dtype).eval()


def iter_tensors(model_dir: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) for every tensor of a single-file or sharded safetensors checkpoint."""
    for path in _weight_files(model_dir):
        try:
            shard = load_file(path)
        except (SafetensorError, OSError) as error:
            raise CheckpointError(f"{path} is not a readable safetensors file: {error}") from None
        yield from shard.items()


def _weight_files(model_dir: Path) -> Iterator[Path]:
    index_path = model_dir / WEIGHTS_INDEX_NAME
    if index_path.is_file():
        try:
            weight_map = json.loads(index_path.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise CheckpointError(f"{index_path} has no valid weight_map") from None
        for name in sorted(set(weight_map.values())):
            if not (model_dir / name).is_file():
                raise CheckpointError(f"shard {name} listed in {index_path.name} is missing from {model_dir}")
            yield model_dir / name
    elif (model_dir / WEIGHTS_NAME).is_file():
        yield model_dir / WEIGHTS_NAME
    elif (model_dir / "pytorch_model.bin").is_file():
        raise CheckpointError(f"{model_dir} holds pytorch_model.bin; tokenworks reads safetensors only")
    else:
        raise CheckpointError(f"{model_dir} has neither {WEIGHTS_NAME} nor {WEIGHTS_INDEX_NAME}")


def load_weights(model: CausalLM, tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
    """Copy checkpoint tensors into the model, refusing any missing, unknown or misshapen one."""
    expected = model.state_dict()
    if model.config.tie_word_embeddings:
        expected.pop("lm_head.weight")
    seen: set[str] = set()
    with torch.no_grad():
        for name, tensor in tensors:
            if name.endswith(_IGNORED_SUFFIXES) or (name == "lm_head.weight" and model.config.tie_word_embeddings):
                continue
            if name not in expected:
                raise CheckpointError(
                    f"unexpected tensor {name!r} in the checkpoint: does config.json match the weights?"
                )
            target = expected[name]
            if tuple(tensor.shape) != tuple(target.shape):
                raise CheckpointError(
                    f"tensor {name!r} has shape {tuple(tensor.shape)} in the checkpoint, "
                    f"but config.json implies {tuple(target.shape)}"
                )
            target.copy_(tensor)
            seen.add(name)
    missing = sorted(set(expected) - seen)
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise CheckpointError(f"the checkpoint lacks tensor {missing[0]!r}{more}")


def save_model(
    model: CausalLM,
    model_dir: str | Path,
    max_shard_bytes: int | None = None,
    generation_config: dict[str, Any] | None = None,
) -> Path:
    """Write config.json, the weights (sharded above max_shard_bytes) and generation_config.json."""
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    config = model.config.replace(dtype=str(model.dtype).removeprefix("torch."))
    config.save(model_dir)
    tensors = {name: t.detach().contiguous().cpu() for name, t in model.state_dict().items()}
    if config.tie_word_embeddings:  # stored once, as Hugging Face does; safetensors refuses shared tensors
        tensors.pop("lm_head.weight")
    _save_tensors(tensors, model_dir, max_shard_bytes)
    defaults = {"bos_token_id": config.bos_token_id, "eos_token_id": config.eos_token_id}
    defaults["pad_token_id"] = config.pad_token_id
    (model_dir / GENERATION_CONFIG_NAME).write_text(
        json.dumps({**defaults, **(generation_config or {})}, indent=2, sort_keys=True) + "\n"
    )
    logger.info("saved %s (%d tensors) to %s", config.architecture, len(tensors), model_dir)
    return model_dir


def _save_tensors(tensors: dict[str, torch.Tensor], model_dir: Path, max_shard_bytes: int | None) -> None:
    for stale in [*model_dir.glob("model-*-of-*.safetensors"), model_dir / WEIGHTS_INDEX_NAME]:
        stale.unlink(missing_ok=True)
    shards: list[dict[str, torch.Tensor]] = [{}]
    shard_bytes = 0
    for name, tensor in tensors.items():
        size = tensor.numel() * tensor.element_size()
        if max_shard_bytes and shards[-1] and shard_bytes + size > max_shard_bytes:
            shards.append({})
            shard_bytes = 0
        shards[-1][name] = tensor
        shard_bytes += size
    if len(shards) == 1:
        save_file(shards[0], model_dir / WEIGHTS_NAME, metadata={"format": "pt"})
        return
    (model_dir / WEIGHTS_NAME).unlink(missing_ok=True)
    weight_map = {}
    for number, shard in enumerate(shards, start=1):
        file_name = f"model-{number:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, model_dir / file_name, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, file_name))
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (model_dir / WEIGHTS_INDEX_NAME).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def load_generation_config(model_dir: str | Path) -> dict[str, Any]:
    """generation_config.json as a dictionary; empty when the directory has none."""
    path = Path(model_dir) / GENERATION_CONFIG_NAME
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{path} is not valid JSON: {error}") from None
