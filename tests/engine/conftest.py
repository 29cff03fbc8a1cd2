"""Random tiny checkpoints built by `transformers` (the reference) and the prompts to test them on."""

from __future__ import annotations

import random
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

from tokenworks.engine.kernels import cpu_kernels
from tokenworks.model import Tokenizer

VOCAB = 512
SHAPE = dict(
    vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=256, eos_token_id=0, bos_token_id=None,
)  # fmt: skip


# The KV cache of the tests' engines, unless a test is about its size: these models need a few
# hundred blocks at most (0.05 GiB is 819 blocks of 128 tokens, 6,553 of 16), and the default, a
# quarter of the memory available (2.7-2.9 GiB on a 24 GiB host), is zeroed in huge pages at every
# start: 1.5 s to over 20 s an engine, as fragmented as the host's memory is.
SMALL_KV_CACHE = {"kv_cache_memory_gib": 0.05}


def _save_random_model(config, directory, tokenizer: Tokenizer) -> None:
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():  # a wide random init: greedy outputs vary from token to token
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.15)
    model.save_pretrained(directory)
    tokenizer.save(directory)


@pytest.fixture(scope="session")
def byte_tokenizer(corpus) -> Tokenizer:
    return Tokenizer.train(corpus, vocab_size=VOCAB)


@pytest.fixture(scope="session", params=["llama", "qwen2"])
def model_dir(request, tmp_path_factory, byte_tokenizer):
    directory = tmp_path_factory.mktemp(request.param)
    config = LlamaConfig(**SHAPE) if request.param == "llama" else Qwen2Config(**SHAPE)
    config.architectures = ["LlamaForCausalLM" if request.param == "llama" else "Qwen2ForCausalLM"]
    _save_random_model(config, directory, byte_tokenizer)
    return directory


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory, byte_tokenizer):
    directory = tmp_path_factory.mktemp("llama-single")
    config = LlamaConfig(**SHAPE)
    config.architectures = ["LlamaForCausalLM"]
    _save_random_model(config, directory, byte_tokenizer)
    return directory


def random_prompts(count: int = 32, seed: int = 0, shared_prefix: int = 0) -> list[list[int]]:
    """Mixed lengths 1..60; with shared_prefix, every other prompt starts with the same tokens."""
    rng = random.Random(seed)
    prefix = [rng.randrange(3, VOCAB) for _ in range(shared_prefix)]
    prompts = []
    for index in range(count):
        body = [rng.randrange(3, VOCAB) for _ in range(rng.randint(1, 60))]
        prompts.append(prefix + body if shared_prefix and index % 2 == 0 else body)
    return prompts


def reference_greedy(model_dir, prompts: list[list[int]], max_new_tokens: int) -> list[list[int]]:
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    outputs = []
    for prompt in prompts:
        generated = model.generate(
            torch.tensor([prompt]), max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens,
            do_sample=False, eos_token_id=None, pad_token_id=0,
        )  # fmt: skip
        outputs.append(generated[0, len(prompt) :].tolist())
    return outputs


def compiled_kernels():
    """The compiled CPU kernels; where a C++ compiler exists they must have built."""
    kernels, reason = cpu_kernels()
    if kernels is None:
        assert shutil.which("g++") is None and shutil.which("c++") is None, reason
        pytest.skip(reason)
    return kernels
