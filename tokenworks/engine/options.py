"""Engine options: what the model is, where it runs, and how much it may batch and cache."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, fields
from pathlib import Path

MAX_LORA_RANK = 512  # the compiled kernels' limit (kernels/step_layers.h)


@dataclass(slots=True)
class EngineOptions:
    model: str | Path
    dtype: str | None = None  # None: the checkpoint's own (float32 for ours)
    device: str = "auto"  # "auto": cuda when present, else cpu
    threads: int | None = None  # torch intra-op threads in the engine process; None: torch's default
    # Tokens per KV-cache block. None: 128 on CPU, as vLLM's CPU backend, and 16 on CUDA. On CPU
    # a sequence's blocks lie anywhere in memory and each jump to the next one stalls decode
    # attention's reads: 128-token blocks read 1.3x faster than 16-token ones on the small
    # benchmark model (kernels/decode_attention.cpp). The price is a coarser prefix cache (it shares
    # whole blocks only) and up to block_size - 1 slots held but unused by each sequence.
    block_size: int | None = None
    kv_cache_memory_gib: float | None = None  # None: a share of free memory (see kv_cache_bytes)
    kv_cache_fraction: float = 0.25  # of available memory, when kv_cache_memory_gib is None
    num_kv_blocks: int | None = None  # exact block count (tests); overrides the two above
    max_num_batched_tokens: int = 2048
    max_num_seqs: int = 256
    max_model_len: int | None = None  # None: the model's max_position_embeddings
    enable_prefix_caching: bool = True
    scheduling_policy: str = "fcfs"  # or "priority"
    seed: int = 0
    # Iterations the engine process's OpenMP threads spin before they sleep between parallel
    # regions (GOMP_SPINCOUNT, about 100 per microsecond). None: they sleep at once, the safe
    # choice on a machine shared with other work; `LLM` defaults to 20000, 2.5x faster
    # one-stream decoding of the tiny model on an idle machine, while on a busy one spinning
    # threads made decoding 3-6x slower; `AsyncLLM` (the server) to 1000, about 10 us.
    omp_spin_count: int | None = None
    # "auto": on CPU, compiled kernels (kernels/: decode attention read in place
    # from the paged cache, matrix products of up to four rows) and oneDNN's matrix products, each
    # where it builds and passes a probe; "torch": PyTorch's own ops only (F.linear, SDPA).
    kernels: str = "auto"
    # With oneDNN's products (CPU): also hold each weight matrix packed in oneDNN's blocked layout,
    # which products of more than four rows read (1.04-2.8x faster, most at 8-32 rows; linear.py
    # has the figures) at the cost of the weights' memory a second time. False: one copy.
    pack_weights: bool = True
    # LoRA adapters (PEFT directories) loaded at start, by the name requests use; more can be
    # loaded and unloaded while serving. max_loras: adapters held at once (every one of them may
    # have rows in the same step); max_lora_rank: the largest rank accepted.
    lora_modules: dict[str, str] | None = None
    max_loras: int = 8
    max_lora_rank: int = 64
    # Publish the prefix cache's changes (blocks stored, removed, all cleared) over ZMQ, as vLLM's
    # --kv-events-config does, so that a router knows which prompts this engine holds.
    kv_events: KVEventsConfig | None = None
    # Score every sampled token under the raw distribution, whether or not its request asked for
    # logprobs, and keep each request's sum and minimum (RequestOutput.cumulative_logprob and
    # min_logprob): the request log's confidence figures. A log-softmax of the step's logits (+57 us
    # a step at 32 rows of a 512-token vocabulary, 4% of the nano model's decode step; about 3.5 ms
    # at 152k tokens), so off unless asked.
    score_sampled_tokens: bool = False

    def validate(self) -> None:
        if (
            (self.block_size is not None and self.block_size < 1)
            or self.max_num_batched_tokens < 1
            or self.max_num_seqs < 1
        ):
            raise ValueError("block_size, max_num_batched_tokens and max_num_seqs must be positive")
        if self.kv_cache_memory_gib is not None and self.kv_cache_memory_gib <= 0:
            raise ValueError(f"kv_cache_memory_gib must be positive, got {self.kv_cache_memory_gib}")
        if not 0 < self.kv_cache_fraction <= 1:
            raise ValueError(f"kv_cache_fraction must be in (0, 1], got {self.kv_cache_fraction}")
        if self.omp_spin_count is not None and self.omp_spin_count < 0:
            raise ValueError(f"omp_spin_count must be None or at least 0, got {self.omp_spin_count}")
        if self.kernels not in ("auto", "torch"):
            raise ValueError(f"kernels must be 'auto' or 'torch', got {self.kernels!r}")
        if self.max_loras < 1 or not 1 <= self.max_lora_rank <= MAX_LORA_RANK:
            raise ValueError(f"max_loras must be positive and max_lora_rank in [1, {MAX_LORA_RANK}]")
        if self.lora_modules and len(self.lora_modules) > self.max_loras:
            raise ValueError(f"{len(self.lora_modules)} lora_modules but max_loras is {self.max_loras}")
        if self.device not in ("auto", "cpu") and not self.device.startswith("cuda"):
            raise ValueError(f"device must be auto, cpu or cuda[:N], got {self.device!r}")

    def resolved_device(self) -> str:
        import torch

        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        return self.device

    def resolved_block_size(self, device: str) -> int:
        if self.block_size is not None:
            return self.block_size
        return 16 if device.startswith("cuda") else 128


@dataclass(slots=True)
class KVEventsConfig:
    """vLLM's `--kv-events-config` (the same JSON keys): where the engine publishes its KV events.

    The events go out on a ZMQ PUB socket at `endpoint` as multipart messages (topic, sequence
    number as 8 bytes big-endian, msgpack payload); a ROUTER socket at `replay_endpoint` sends
    a subscriber the batches it missed, from the last `buffer_steps`. An endpoint's port may
    be `*` (any free one): the engine reports the ones it bound (`Ready.kv_events`).
    """

    enable_kv_cache_events: bool = False
    publisher: str = "zmq"
    endpoint: str = "tcp://*:5557"
    replay_endpoint: str | None = None
    buffer_steps: int = 10_000
    hwm: int = 100_000
    max_queue_size: int = 100_000
    topic: str = ""

    @classmethod
    def from_json(cls, text: str) -> KVEventsConfig:
        """Parsed from vLLM's JSON form; ValueError naming what is wrong."""
        try:
            values = json.loads(text)
        except ValueError as error:
            raise ValueError(f"the KV events config is not JSON: {error}") from None
        if not isinstance(values, dict):
            raise ValueError("the KV events config must be a JSON object")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown KV events config keys: {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        config = cls(**values)
        if config.publisher not in ("zmq", "null"):
            raise ValueError(f"the KV events publisher is 'zmq' or 'null', got {config.publisher!r}")
        if config.buffer_steps < 1 or config.hwm < 0 or config.max_queue_size < 1:
            raise ValueError("buffer_steps and max_queue_size must be positive, hwm at least 0")
        return config

    @property
    def publishing(self) -> bool:
        return self.enable_kv_cache_events and self.publisher == "zmq"


def available_memory_bytes(device: str) -> int:
    """Free memory where the cache will live: the GPU's, or MemAvailable of this host."""
    if device.startswith("cuda"):
        import torch

        free, _ = torch.cuda.mem_get_info(device)
        return free
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
