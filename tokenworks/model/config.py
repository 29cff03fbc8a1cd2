"""The model configuration and its mapping to and from Hugging Face `config.json`.

One dataclass describes every supported Llama-family decoder; the differences between
architectures (biases, sliding window, rope scaling) are plain fields, so the model code
never branches on an architecture name.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from tokenworks.errors import CheckpointError, ConfigError

# Hugging Face architecture name -> model_type, for the decoders this model core implements.
SUPPORTED_ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "Qwen2ForCausalLM": "qwen2",
    "MistralForCausalLM": "mistral",
}
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")
_LLAMA3_ROPE_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")


@dataclass(slots=True)
class ModelConfig:
    """Shape and numerics of a Llama-family decoder-only transformer."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    architecture: str = "LlamaForCausalLM"
    head_dim: int = 0  # 0 means hidden_size // num_attention_heads
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    # None, or {"rope_type": "linear", "factor": f} or the Llama-3 keys (see _LLAMA3_ROPE_KEYS).
    rope_scaling: dict[str, Any] | None = None
    tie_word_embeddings: bool = False
    qkv_bias: bool = False  # Qwen2, and Llama with attention_bias
    o_bias: bool = False  # Llama with attention_bias
    mlp_bias: bool = False
    sliding_window: int | None = None  # Mistral: attend to at most this many latest positions
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None
    dtype: str = "float32"
    extra: dict[str, Any] = field(default_factory=dict)  # unknown config.json keys, kept on save

    def __post_init__(self) -> None:
        if self.head_dim == 0:
            self.head_dim = self.hidden_size // max(self.num_attention_heads, 1)
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError naming the first field that cannot describe a working model."""
        if self.architecture not in SUPPORTED_ARCHITECTURES:
            raise ConfigError(
                f"architecture {self.architecture!r} is not supported; use one of {', '.join(SUPPORTED_ARCHITECTURES)}"
            )
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.num_attention_heads <= 0 or self.num_key_value_heads <= 0:
            raise ConfigError("num_attention_heads and num_key_value_heads must be positive")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(
                f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )
        if self.head_dim % 2:
            raise ConfigError(f"head_dim must be even for rotary embeddings, got {self.head_dim}")
        if self.sliding_window is not None and self.sliding_window <= 0:
            raise ConfigError(f"sliding_window must be positive or null, got {self.sliding_window}")
        if self.rope_scaling is not None:
            rope_type = self.rope_scaling.get("rope_type")
            if rope_type not in SUPPORTED_ROPE_TYPES:
                raise ConfigError(
                    f"rope scaling type {rope_type!r} is not supported; use one of {SUPPORTED_ROPE_TYPES}"
                )
            needed = ("factor",) if rope_type == "linear" else _LLAMA3_ROPE_KEYS if rope_type == "llama3" else ()
            missing = [key for key in needed if key not in self.rope_scaling]
            if missing:
                raise ConfigError(f"rope scaling {rope_type!r} needs {', '.join(missing)}")

    @property
    def model_type(self) -> str:
        return SUPPORTED_ARCHITECTURES[self.architecture]

    @property
    def eos_token_ids(self) -> list[int]:
        if self.eos_token_id is None:
            return []
        return [self.eos_token_id] if isinstance(self.eos_token_id, int) else list(self.eos_token_id)

    def num_parameters(self) -> int:
        """Parameter count, counting a tied embedding once."""
        h, kv = self.hidden_size, self.num_key_value_heads * self.head_dim
        q = self.num_attention_heads * self.head_dim
        attention = h * q + 2 * h * kv + q * h
        attention += (q + 2 * kv) * self.qkv_bias + h * self.o_bias
        mlp = 3 * h * self.intermediate_size + (2 * self.intermediate_size + h) * self.mlp_bias
        per_layer = attention + mlp + 2 * h
        embeddings = self.vocab_size * h * (1 if self.tie_word_embeddings else 2)
        return self.num_hidden_layers * per_layer + embeddings + h

    # ---- Hugging Face config.json ----------------------------------------------------

    @classmethod
    def from_hf_dict(cls, hf: dict[str, Any]) -> ModelConfig:
        """Read a Hugging Face `config.json` dictionary (transformers 4 or 5 layout)."""
        architecture = _architecture_of(hf)
        try:
            hidden_act = hf.get("hidden_act", "silu")
            if hidden_act != "silu":
                raise ConfigError(f"hidden_act {hidden_act!r} is not supported; only 'silu' (SwiGLU)")
            if hf.get("quantization_config"):
                raise ConfigError("quantized checkpoints are not supported; use a float16/bfloat16/float32 one")
            if architecture == "Qwen2ForCausalLM" and hf.get("use_sliding_window", False):
                raise ConfigError("Qwen2 with use_sliding_window=true is not supported")
            heads = hf["num_attention_heads"]
            rope_theta, rope_scaling = _rope_of(hf)
            attention_bias = bool(hf.get("attention_bias", False))
            known = dict(
                architecture=architecture,
                vocab_size=hf["vocab_size"],
                hidden_size=hf["hidden_size"],
                intermediate_size=hf["intermediate_size"],
                num_hidden_layers=hf["num_hidden_layers"],
                num_attention_heads=heads,
                num_key_value_heads=hf.get("num_key_value_heads") or heads,
                head_dim=hf.get("head_dim") or 0,
                max_position_embeddings=hf.get("max_position_embeddings", 2048),
                rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
                rope_theta=rope_theta,
                rope_scaling=rope_scaling,
                tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
                qkv_bias=architecture == "Qwen2ForCausalLM" or attention_bias,
                o_bias=architecture == "LlamaForCausalLM" and attention_bias,
                mlp_bias=bool(hf.get("mlp_bias", False)),
                sliding_window=hf.get("sliding_window") if architecture == "MistralForCausalLM" else None,
                bos_token_id=hf.get("bos_token_id"),
                eos_token_id=hf.get("eos_token_id"),
                pad_token_id=hf.get("pad_token_id"),
                dtype=str(hf.get("dtype") or hf.get("torch_dtype") or "float32"),
            )
        except KeyError as missing:
            raise ConfigError(f"config.json lacks the required key {missing}") from None
        extra = {k: v for k, v in hf.items() if k not in _HF_KEYS_WE_WRITE and k not in _HF_KEYS_WE_DERIVE}
        return cls(**known, extra=extra)

    def to_hf_dict(self) -> dict[str, Any]:
        """The `config.json` dictionary that transformers (4 and 5) and vLLM load."""
        rope_parameters: dict[str, Any] = {"rope_type": "default", "rope_theta": self.rope_theta}
        if self.rope_scaling:
            rope_parameters.update(self.rope_scaling)
        hf: dict[str, Any] = dict(self.extra)
        hf.update(
            architectures=[self.architecture],
            model_type=self.model_type,
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            num_key_value_heads=self.num_key_value_heads,
            head_dim=self.head_dim,
            hidden_act="silu",
            max_position_embeddings=self.max_position_embeddings,
            rms_norm_eps=self.rms_norm_eps,
            # transformers 4 and vLLM read rope_theta/rope_scaling; transformers 5 reads rope_parameters.
            rope_theta=self.rope_theta,
            rope_scaling=dict(self.rope_scaling) if self.rope_scaling else None,
            rope_parameters=rope_parameters,
            tie_word_embeddings=self.tie_word_embeddings,
            bos_token_id=self.bos_token_id,
            eos_token_id=self.eos_token_id,
            pad_token_id=self.pad_token_id,
            torch_dtype=self.dtype,
            use_cache=True,
        )
        if self.architecture == "LlamaForCausalLM":
            if self.qkv_bias != self.o_bias:
                raise ConfigError("Llama checkpoints bias either all attention projections or none")
            hf.update(attention_bias=self.qkv_bias, mlp_bias=self.mlp_bias)
        elif self.qkv_bias != (self.architecture == "Qwen2ForCausalLM") or self.o_bias or self.mlp_bias:
            raise ConfigError(f"{self.architecture} does not support this combination of biases")
        if self.architecture == "MistralForCausalLM":
            hf["sliding_window"] = self.sliding_window
        elif self.sliding_window is not None:
            raise ConfigError(f"{self.architecture} checkpoints cannot carry a sliding window")
        if self.architecture == "Qwen2ForCausalLM":
            hf.update(use_sliding_window=False, sliding_window=None)
        return hf

    @classmethod
    def load(cls, model_dir: str | Path) -> ModelConfig:
        path = Path(model_dir) / "config.json"
        if not path.is_file():
            raise CheckpointError(f"{path} not found: is {model_dir} a Hugging Face model directory?")
        try:
            hf = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ConfigError(f"{path} is not valid JSON: {error}") from None
        return cls.from_hf_dict(hf)

    def save(self, model_dir: str | Path) -> None:
        path = Path(model_dir) / "config.json"
        path.write_text(json.dumps(self.to_hf_dict(), indent=2, sort_keys=True) + "\n")

    def replace(self, **changes: Any) -> ModelConfig:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update(changes)
        return ModelConfig(**values)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# Keys to_hf_dict writes itself, and keys it derives from others: neither is kept as "extra".
_HF_KEYS_WE_WRITE = {
    "architectures", "model_type", "vocab_size", "hidden_size", "intermediate_size",
    "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim", "hidden_act",
    "max_position_embeddings", "rms_norm_eps", "rope_theta", "rope_scaling", "rope_parameters",
    "tie_word_embeddings", "bos_token_id", "eos_token_id", "pad_token_id", "torch_dtype", "dtype",
    "use_cache", "attention_bias", "mlp_bias", "sliding_window", "use_sliding_window",
}  # fmt: skip
_HF_KEYS_WE_DERIVE = {"transformers_version", "max_window_layers", "layer_types", "attention_dropout"}


def _architecture_of(hf: dict[str, Any]) -> str:
    architectures = hf.get("architectures") or []
    for name in architectures:
        if name in SUPPORTED_ARCHITECTURES:
            return name
    by_type = {model_type: name for name, model_type in SUPPORTED_ARCHITECTURES.items()}
    if not architectures and hf.get("model_type") in by_type:
        return by_type[hf["model_type"]]
    named = ", ".join(architectures) or f"model_type {hf.get('model_type')!r}"
    raise ConfigError(f"unsupported architecture {named}; tokenworks loads {', '.join(SUPPORTED_ARCHITECTURES)}")


def _rope_of(hf: dict[str, Any]) -> tuple[float, dict[str, Any] | None]:
    """rope_theta and the scaling dictionary, from either config layout.

    transformers 5 keeps both in `rope_parameters`; transformers 4 has `rope_theta` and an
    optional `rope_scaling` whose type key was once called `type`.
    """
    parameters = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
    theta = float(parameters.pop("rope_theta", hf.get("rope_theta", 10000.0)))
    rope_type = parameters.pop("rope_type", None) or parameters.pop("type", None) or "default"
    parameters.pop("type", None)
    if rope_type == "default":
        return theta, None
    return theta, {"rope_type": rope_type, **parameters}
