"""LoRA adapters on disk, in PEFT's layout: `adapter_config.json` + `adapter_model.safetensors`.

Training writes them (train/lora.py) and the engine serves them (engine/lora.py); both read
them here, so an adapter `peft` saved and one tokenworks saved are the same thing to either.
Only reading the tensors imports torch: the configuration is plain JSON, which the serving front
and training's configuration check without it. Tensor names are PEFT's: `base_model.model.` + the module's name in the model +
`.lora_A.weight` (rank x in) or `.lora_B.weight` (out x rank).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tokenworks.errors import CheckpointError

if TYPE_CHECKING:
    import torch

ADAPTER_CONFIG_NAME = "adapter_config.json"
ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."
# The projections an adapter may wrap: the decoder layers' linear maps, by their module names.
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True, slots=True)
class AdapterConfig:
    """What adapter_config.json says that matters for computing with the adapter."""

    rank: int
    alpha: float
    dropout: float
    targets: tuple[str, ...]
    base: str  # base_model_name_or_path, as recorded (may be empty)

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank


def read_adapter_config(directory: Path) -> AdapterConfig:
    """The settings of a saved plain LoRA adapter; CheckpointError naming what is wrong."""
    path = Path(directory) / ADAPTER_CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(f"{path} not found: {directory} is not a LoRA adapter directory")
    try:
        raw = json.loads(path.read_text())
        if raw.get("peft_type", "LORA") != "LORA" or raw.get("use_dora") or raw.get("use_rslora"):
            raise CheckpointError(f"{path}: only plain LoRA adapters are supported (not DoRA or rsLoRA)")
        if raw.get("modules_to_save") or raw.get("bias", "none") != "none":
            raise CheckpointError(f"{path}: adapters with modules_to_save or trained biases are not supported")
        targets = raw["target_modules"]
        targets = (targets,) if isinstance(targets, str) else tuple(targets)
        rank, alpha = int(raw["r"]), float(raw["lora_alpha"])
        dropout = float(raw.get("lora_dropout") or 0.0)
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        raise CheckpointError(f"{path} is not a valid adapter_config.json") from None
    if rank < 1:
        raise CheckpointError(f"{path}: r must be at least 1, got {rank}")
    return AdapterConfig(rank, alpha, dropout, targets, str(raw.get("base_model_name_or_path") or ""))


def read_adapter_tensors(directory: Path) -> dict[str, torch.Tensor]:
    """The adapter's tensors under PEFT's names, with the adapter name PEFT may insert
    (`.lora_A.default.weight`) taken out."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(directory) / ADAPTER_WEIGHTS_NAME
    if not path.is_file():
        raise CheckpointError(f"{path} not found: the adapter has no weights")
    try:
        tensors = load_file(path)
    except (SafetensorError, OSError) as error:
        raise CheckpointError(f"{path} is not a readable safetensors file: {error}") from None
    return {name.replace(".default.weight", ".weight"): tensor for name, tensor in tensors.items()}
