"""LoRA adapters in the engine: read from PEFT directories, checked against the base model, and
held as the pieces a step adds to its fused products, row by row.

A step computes q, k and v as one product and gate and up as another (model_runner.py), so an
adapter's target is a piece of one of the step's four products (qkv, o, gate_up, down): its
A (rank x in), its B transposed and scaled (rank x width), and the first column of the product
it adds to. Each row of a step adds only its own adapter's pieces (punica's per-row idea,
which vLLM's multi-LoRA serving uses): rows of four adapters and of the base share one step,
and the base weights are never touched. The registry holds what is loaded; a request holds
its adapter until it finishes, so unloading one that is in use takes effect for new requests at
once and frees its tensors when the last of its requests is done.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from tokenworks.errors import CheckpointError
from tokenworks.model import adapter as peft
from tokenworks.model.config import ModelConfig

PROJECTIONS = ("qkv", "o", "gate_up", "down")  # the step's products, in model_runner.LayerWeights' order
_TENSOR_NAME = re.compile(
    re.escape(peft.PEFT_PREFIX) + r"model\.layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)\.lora_([AB])\.weight"
)


@dataclass(slots=True)
class LoraPiece:
    """One target projection's adapter, as a piece of a fused product."""

    a: torch.Tensor  # (rank, in)
    b_t: torch.Tensor  # (rank, width): B transposed, times the adapter's alpha / rank
    offset: int  # the first column of the fused product this piece adds to


@dataclass(eq=False)
class LoraAdapter:
    name: str
    path: str
    key: int  # unique for each load, never reused: the kernels' handle and the prefix cache's salt
    rank: int
    targets: tuple[str, ...]
    pieces: list[list[list[LoraPiece]]]  # [layer][projection]: what each product adds, maybe nothing
    users: int = 0  # unfinished requests that use it
    unloaded: bool = False  # no new request may use it; its tensors go with its last request

    @property
    def cache_salt(self) -> str:
        """Blocks computed with this adapter are cached apart from the base's and other adapters'
        (a reloaded adapter of the same name gets a new key, so none of its old blocks match)."""
        return f"lora:{self.key}"


def target_slots(config: ModelConfig) -> dict[str, tuple[int, int, int, int]]:
    """Each target module's (product, first column, width, input width) in the step's products."""
    q, kv = config.num_attention_heads * config.head_dim, config.num_key_value_heads * config.head_dim
    hidden, inter = config.hidden_size, config.intermediate_size
    return {
        "q_proj": (0, 0, q, hidden), "k_proj": (0, q, kv, hidden), "v_proj": (0, q + kv, kv, hidden),
        "o_proj": (1, 0, hidden, q), "gate_proj": (2, 0, inter, hidden), "up_proj": (2, inter, inter, hidden),
        "down_proj": (3, 0, hidden, inter),
    }  # fmt: skip


def read_adapter(
    name: str, path: str | Path, config: ModelConfig, max_rank: int, key: int, dtype: torch.dtype, device: torch.device
) -> LoraAdapter:
    """Read and check a PEFT adapter for this base model; ValueError saying what does not fit."""
    directory = Path(path)
    try:
        settings = peft.read_adapter_config(directory)
        tensors = peft.read_adapter_tensors(directory)
    except CheckpointError as error:
        raise ValueError(str(error)) from None
    if settings.rank > max_rank:
        raise ValueError(
            f"the adapter {name!r} has rank {settings.rank}, above this server's --max-lora-rank {max_rank}"
        )
    slots = target_slots(config)
    pairs: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for tensor_name, tensor in tensors.items():
        match = _TENSOR_NAME.fullmatch(tensor_name)
        if match is None:
            raise ValueError(f"{tensor_name} in {directory} is not a LoRA weight of a decoder layer's projection")
        layer, target, which = int(match[1]), match[2], match[3]
        if target not in slots:
            raise ValueError(f"{tensor_name}: LoRA on {target} is not supported (targets: {', '.join(slots)})")
        if layer >= config.num_hidden_layers:
            raise ValueError(
                f"{tensor_name}: the adapter does not fit this base model, which has {config.num_hidden_layers} "
                "layers (an adapter of another model?)"
            )
        pairs.setdefault((layer, target), {})[which] = tensor
    if not pairs:
        raise ValueError(f"the adapter in {directory} holds no LoRA weights")
    pieces: list[list[list[LoraPiece]]] = [[[] for _ in PROJECTIONS] for _ in range(config.num_hidden_layers)]
    for (layer, target), pair in sorted(pairs.items()):
        product, offset, width, fan_in = slots[target]
        where = f"{peft.PEFT_PREFIX}model.layers.{layer}.*.{target}"
        if set(pair) != {"A", "B"}:
            raise ValueError(f"{where} has lora_{next(iter(pair))} without lora_{'B' if 'A' in pair else 'A'}")
        a, b = pair["A"], pair["B"]
        if a.dim() != 2 or b.dim() != 2 or a.shape != (settings.rank, fan_in) or b.shape != (width, settings.rank):
            raise ValueError(
                f"{where}: lora_A {tuple(a.shape)} and lora_B {tuple(b.shape)} do not fit this base model, which needs "
                f"{(settings.rank, fan_in)} and {(width, settings.rank)} (an adapter of another model?)"
            )
        b_t = (b.to(torch.float32).t() * settings.scaling).to(dtype)
        pieces[layer][product].append(
            LoraPiece(a.to(dtype).to(device).contiguous(), b_t.to(device).contiguous(), offset)
        )
    targets = tuple(sorted({target for _, target in pairs}))
    return LoraAdapter(name, str(directory), key, settings.rank, targets, pieces)


class LoraRegistry:
    """The adapters an engine holds, by name: at most `max_loras`, each of rank <= `max_rank`."""

    def __init__(
        self, config: ModelConfig, max_loras: int, max_rank: int, dtype: torch.dtype, device: torch.device
    ) -> None:
        self.config, self.max_loras, self.max_rank, self.dtype, self.device = config, max_loras, max_rank, dtype, device
        self.adapters: dict[str, LoraAdapter] = {}
        self._next_key = 0

    def load(self, name: str, path: str | Path, replace: bool = False) -> tuple[LoraAdapter, LoraAdapter | None]:
        """Read and hold an adapter; with `replace`, in place of the one of that name, which is
        returned to be freed as `unload` says (the new one is read first: a bad one changes nothing)."""
        if not name or not isinstance(name, str):
            raise ValueError("an adapter needs a name")
        if name in self.adapters and not replace:
            raise ValueError(f"an adapter named {name!r} is loaded already: unload it first, or load it in place")
        if name not in self.adapters and len(self.adapters) >= self.max_loras:
            raise ValueError(f"{len(self.adapters)} adapters are loaded, this server's --max-loras: unload one first")
        adapter = read_adapter(name, path, self.config, self.max_rank, self._next_key, self.dtype, self.device)
        self._next_key += 1
        replaced = self.unload(name) if name in self.adapters else None
        self.adapters[name] = adapter
        return adapter, replaced

    def unload(self, name: str) -> LoraAdapter:
        """Take the name away now; the caller frees the tensors once `adapter.users` is 0."""
        adapter = self.adapters.pop(name, None)
        if adapter is None:
            raise ValueError(f"no adapter named {name!r} is loaded")
        adapter.unloaded = True
        return adapter

    def acquire(self, name: str) -> LoraAdapter:
        adapter = self.adapters.get(name)
        if adapter is None:
            raise ValueError(f"no adapter named {name!r} is loaded")
        adapter.users += 1
        return adapter

    def listing(self) -> dict[str, str]:
        return {name: adapter.path for name, adapter in self.adapters.items()}
