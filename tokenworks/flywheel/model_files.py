"""What a model directory is, read from its files alone: its kind, a content hash, and its base shape.

The registry decides whether a candidate may stand beside the champion from this, so it must
be cheap and torch-free (`tokenworks models` never imports torch): configs are JSON, and a
safetensors file's tensor shapes are in its JSON header. A truncated weights file is found
here too, since the header's offsets must account for every byte of the file.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from tokenworks.errors import TokenworksError
from tokenworks.model.adapter import ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME, PEFT_PREFIX, read_adapter_config
from tokenworks.model.config import ModelConfig

# The checkpoint's file names as model/checkpoint.py writes them (that module imports torch).
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
_LORA_TENSOR = re.compile(r"^model\.layers\.(\d+)\.\w+\.(\w+)\.lora_([AB])\.weight$")

Kind = Literal["checkpoint", "lora"]


class ModelFilesError(TokenworksError):
    """A directory is not a model we can register: missing, corrupt, or of another shape."""


@dataclass(frozen=True, slots=True)
class BaseShape:
    """The shape a checkpoint has, or an adapter needs of its base: what must match to swap one for another."""

    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int

    @classmethod
    def of_config(cls, config: ModelConfig) -> BaseShape:
        return cls(
            config.architecture, config.vocab_size, config.hidden_size, config.intermediate_size,
            config.num_hidden_layers, config.num_attention_heads, config.num_key_value_heads, config.head_dim,
        )  # fmt: skip

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def differences(self, other: BaseShape) -> list[str]:
        """'field: mine != theirs' for every field that differs."""
        mine, theirs = self.as_dict(), other.as_dict()
        return [f"{key} {mine[key]} != {theirs[key]}" for key in mine if mine[key] != theirs[key]]

    def projection(self, name: str) -> tuple[int, int] | None:
        """(in, out) features of a decoder layer's linear map, by its module name."""
        attention = self.num_attention_heads * self.head_dim
        key_value = self.num_key_value_heads * self.head_dim
        h, i = self.hidden_size, self.intermediate_size
        return {
            "q_proj": (h, attention), "k_proj": (h, key_value), "v_proj": (h, key_value), "o_proj": (attention, h),
            "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h),
        }.get(name)  # fmt: skip


@dataclass(frozen=True, slots=True)
class ModelFiles:
    """A model directory as the registry records it."""

    path: Path
    kind: Kind
    content_hash: str  # sha256 over every file's relative path and bytes
    shape: BaseShape  # the checkpoint's own, or the adapter's base's
    base_path: Path | None  # an adapter's base checkpoint
    base_hash: str | None  # that base's content hash


def inspect_model(path: Path, base: Path | None = None) -> ModelFiles:
    """Read a checkpoint or LoRA adapter directory; ModelFilesError naming what is wrong.

    An adapter's base is `base` if given, else the path its adapter_config.json records
    (absolute, or relative to the working directory or to the adapter)."""
    path = Path(path)
    if not path.is_dir():
        raise ModelFilesError(f"{path} is not a directory: give a checkpoint or LoRA adapter directory")
    if (path / ADAPTER_CONFIG_NAME).is_file():
        return _inspect_adapter(path, base)
    if (path / CONFIG_NAME).is_file():
        shape = checkpoint_shape(path)
        return ModelFiles(path, "checkpoint", content_hash(path), shape, None, None)
    raise ModelFilesError(
        f"{path} holds neither {CONFIG_NAME} (a checkpoint) nor {ADAPTER_CONFIG_NAME} (a LoRA adapter)"
    )


def checkpoint_shape(path: Path) -> BaseShape:
    """The shape config.json declares, after checking that the weights are whole and agree with it."""
    try:
        shape = BaseShape.of_config(ModelConfig.load(path))
    except TokenworksError as error:
        raise ModelFilesError(f"{path}: {error}") from None
    tensors = checkpoint_tensors(path)
    embedding = tensors.get("model.embed_tokens.weight")
    if embedding is None:
        raise ModelFilesError(f"{path}: the weights have no model.embed_tokens.weight")
    if embedding != [shape.vocab_size, shape.hidden_size]:
        raise ModelFilesError(
            f"{path}: model.embed_tokens.weight has shape {embedding}, but config.json says "
            f"[{shape.vocab_size}, {shape.hidden_size}]"
        )
    return shape


def checkpoint_tensors(path: Path) -> dict[str, list[int]]:
    """Tensor name -> shape over the checkpoint's safetensors file or shards."""
    index = path / WEIGHTS_INDEX_NAME
    if (path / WEIGHTS_NAME).is_file():
        return safetensors_shapes(path / WEIGHTS_NAME)
    if not index.is_file():
        raise ModelFilesError(f"{path} has no weights: neither {WEIGHTS_NAME} nor {WEIGHTS_INDEX_NAME}")
    try:
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
        raise ModelFilesError(f"{index} is not a safetensors index (no weight_map)") from None
    shapes: dict[str, list[int]] = {}
    for shard in shards:
        shapes.update(safetensors_shapes(path / shard))
    return shapes


def safetensors_shapes(path: Path) -> dict[str, list[int]]:
    """Tensor name -> shape from a safetensors header (an 8-byte length, then JSON), checking the
    file holds exactly the bytes the header's offsets describe."""
    if not path.is_file():
        raise ModelFilesError(f"{path} not found")
    size = path.stat().st_size
    with path.open("rb") as file:
        head = file.read(8)
        if len(head) < 8:
            raise ModelFilesError(f"{path} is not a safetensors file: shorter than its header length")
        (length,) = struct.unpack("<Q", head)
        if length > size - 8:
            raise ModelFilesError(f"{path} is truncated or not a safetensors file: its header runs past the end")
        try:
            header = json.loads(file.read(length))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ModelFilesError(f"{path} is not a safetensors file: its header is not JSON") from None
    try:
        entries = {name: entry for name, entry in header.items() if name != "__metadata__"}
        end = max((int(entry["data_offsets"][1]) for entry in entries.values()), default=0)
        shapes = {name: [int(n) for n in entry["shape"]] for name, entry in entries.items()}
    except (AttributeError, KeyError, TypeError, ValueError, IndexError):
        raise ModelFilesError(f"{path} is not a safetensors file: its header lacks shapes or offsets") from None
    if 8 + length + end != size:
        raise ModelFilesError(
            f"{path} has {size} bytes but its header describes {8 + length + end}: the file is truncated or altered"
        )
    return shapes


def _inspect_adapter(path: Path, base: Path | None) -> ModelFiles:
    try:
        recorded = read_adapter_config(path).base
    except TokenworksError as error:
        raise ModelFilesError(str(error)) from None
    base_path = base if base is not None else _resolve_base(path, recorded)
    if base_path is None:
        raise ModelFilesError(
            f"{path}: its base model {recorded or '(not recorded)'} is not a directory here; "
            "pass the base checkpoint with --base"
        )
    shape = checkpoint_shape(base_path)
    check_adapter_fits(path, shape)
    return ModelFiles(path, "lora", content_hash(path), shape, base_path, content_hash(base_path))


def _resolve_base(adapter: Path, recorded: str) -> Path | None:
    if not recorded:
        return None
    for candidate in (Path(recorded), adapter / recorded):
        if (candidate / CONFIG_NAME).is_file():
            return candidate
    return None


def check_adapter_fits(path: Path, shape: BaseShape) -> None:
    """Every LoRA tensor must be a factor of one of the base's projections: A (rank, in), B (out, rank)."""
    for name, dims in safetensors_shapes(path / ADAPTER_WEIGHTS_NAME).items():
        match = _LORA_TENSOR.match(name.removeprefix(PEFT_PREFIX).replace(".default.weight", ".weight"))
        projection = shape.projection(match[2]) if match else None
        if match is None or projection is None or len(dims) != 2:
            raise ModelFilesError(f"{path}: {name} is not a LoRA factor of a decoder projection")
        layer, (features_in, features_out) = int(match[1]), projection
        expected = dims[1] == features_in if match[3] == "A" else dims[0] == features_out
        if layer >= shape.num_hidden_layers or not expected:
            raise ModelFilesError(
                f"{path} is an adapter for another base shape: {name} has shape {dims}, but the base has "
                f"{shape.num_hidden_layers} layers and {match[2]} maps {features_in} -> {features_out} features"
            )


def content_hash(path: Path) -> str:
    """sha256 over the directory's files in name order: each relative path, then its bytes' sha256."""
    digest = hashlib.sha256()
    for file in sorted(p for p in Path(path).rglob("*") if p.is_file()):
        digest.update(file.relative_to(path).as_posix().encode() + b"\0")
        digest.update(file_sha256(file).encode())
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as file:
        while chunk := file.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()
