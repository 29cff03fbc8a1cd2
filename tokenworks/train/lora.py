"""LoRA: low-rank adapters on a frozen model, saved PEFT-style or merged into a plain checkpoint.

`LoRALinear` keeps the base layer's `weight` (and `bias`) under the same names and adds
`lora_A` (rank x in) and `lora_B` (out x rank), so its state-dict keys are exactly PEFT's
once prefixed with `base_model.model.`: an adapter tokenworks saves loads in `peft`, and the
reverse. B starts at zero, so training starts from the base model's function.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from tokenworks.errors import CheckpointError, TrainError
from tokenworks.model import adapter
from tokenworks.model.adapter import ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME, PEFT_PREFIX
from tokenworks.model.transformer import CausalLM
from tokenworks.train.config import LoraConfig


class LoRALinear(nn.Module):
    """y = x W^T + b + scaling * dropout(x) A^T B^T, with W and b frozen."""

    def __init__(self, base: nn.Linear, config: LoraConfig) -> None:
        super().__init__()
        self.weight = base.weight
        self.bias = base.bias
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        out_features, in_features = base.weight.shape
        device, dtype = base.weight.device, base.weight.dtype
        self.lora_A = nn.Linear(in_features, config.rank, bias=False, device=device, dtype=dtype)
        self.lora_B = nn.Linear(config.rank, out_features, bias=False, device=device, dtype=dtype)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))  # PEFT's default initialisation
        nn.init.zeros_(self.lora_B.weight)
        self.dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        self.scaling = config.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, T, in) -> (B, T, out); the adapter path goes through rank r only.
        return F.linear(x, self.weight, self.bias) + self.lora_B(self.lora_A(self.dropout(x))) * self.scaling

    def merged(self) -> nn.Linear:
        """A plain Linear whose weight is W + scaling * B A."""
        out_features, in_features = self.weight.shape
        linear = nn.Linear(
            in_features, out_features, bias=self.bias is not None, device=self.weight.device, dtype=self.weight.dtype
        )
        with torch.no_grad():
            linear.weight.copy_(self.weight + self.scaling * (self.lora_B.weight @ self.lora_A.weight))
            if self.bias is not None:
                linear.bias.copy_(self.bias)
        return linear


def apply_lora(model: CausalLM, config: LoraConfig) -> CausalLM:
    """Freeze every parameter and wrap each target projection in a LoRALinear (in place)."""
    config.check()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    for layer in model.model.layers:
        for parent in (layer.self_attn, layer.mlp):
            for name in config.targets:
                child = getattr(parent, name, None)
                if isinstance(child, nn.Linear):
                    setattr(parent, name, LoRALinear(child, config))
    return model


def merge_lora(model: CausalLM) -> CausalLM:
    """Fold every adapter into its base weight (in place); the result is a plain CausalLM."""
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, LoRALinear):
                setattr(module, name, child.merged())
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    return model


def adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter tensors under PEFT's names."""
    return {
        PEFT_PREFIX + name: tensor.detach().contiguous().cpu()
        for name, tensor in model.state_dict().items()
        if ".lora_A." in name or ".lora_B." in name
    }


def save_adapter(model: nn.Module, config: LoraConfig, directory: Path, base: str) -> Path:
    """adapter_config.json + adapter_model.safetensors, the layout `peft` reads."""
    directory.mkdir(parents=True, exist_ok=True)
    save_file(adapter_state(model), directory / ADAPTER_WEIGHTS_NAME, metadata={"format": "pt"})
    peft_config: dict[str, Any] = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base,
        "r": config.rank,
        "lora_alpha": config.alpha,
        "lora_dropout": config.dropout,
        "target_modules": list(config.targets),
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "init_lora_weights": True,
        "use_rslora": False,
        "use_dora": False,
        "modules_to_save": None,
    }
    (directory / ADAPTER_CONFIG_NAME).write_text(json.dumps(peft_config, indent=2, sort_keys=True) + "\n")
    return directory


def read_adapter_config(directory: Path) -> tuple[LoraConfig, str]:
    """The LoRA settings and base model path of a saved adapter."""
    try:
        saved = adapter.read_adapter_config(directory)
    except CheckpointError as error:
        raise TrainError(str(error)) from None
    return LoraConfig(saved.rank, saved.alpha, saved.dropout, saved.targets), saved.base


def load_adapter(model: CausalLM, directory: Path) -> CausalLM:
    """Wrap the model's targets as the adapter says and load its tensors, refusing a mismatch."""
    config, _ = read_adapter_config(directory)
    apply_lora(model, config)
    expected = {PEFT_PREFIX + k: v for k, v in model.state_dict().items() if ".lora_A." in k or ".lora_B." in k}
    try:
        tensors = adapter.read_adapter_tensors(directory)
    except CheckpointError as error:
        raise TrainError(str(error)) from None
    if set(tensors) != set(expected):
        missing = sorted(set(expected) - set(tensors))[:1] or sorted(set(tensors) - set(expected))[:1]
        raise TrainError(f"the adapter in {directory} does not fit this base model (first mismatch: {missing[0]})")
    with torch.no_grad():
        for name, tensor in tensors.items():
            if tensor.shape != expected[name].shape:
                raise TrainError(
                    f"adapter tensor {name} has shape {tuple(tensor.shape)}, the base model needs "
                    f"{tuple(expected[name].shape)}"
                )
            expected[name].copy_(tensor)
    return model
