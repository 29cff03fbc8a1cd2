"""The compiled layers of a step (StepLayers) against the runner's PyTorch layers."""

from __future__ import annotations

import pytest
import torch

from tokenworks.engine.model_runner import ModelRunner
from tokenworks.engine.request import Request
from tokenworks.engine.sampling_params import SamplingParams
from tokenworks.engine.scheduler import ScheduledChunk
from tokenworks.model.config import ModelConfig
from tokenworks.model.transformer import CausalLM

from .conftest import compiled_kernels

BLOCK = 4
PROMPT_LENGTHS = [7, 12, 3, 9, 1, 15, 4, 8, 11]  # a prompt of each sequence; the decode token follows it


def _runner(bias: bool, window: int | None, pack_weights: bool) -> ModelRunner:
    config = ModelConfig(
        vocab_size=96, hidden_size=64, intermediate_size=80, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, qkv_bias=bias, o_bias=bias, mlp_bias=bias, sliding_window=window,
    )  # fmt: skip
    model = CausalLM(config).init_weights(seed=0, std=0.2)
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():  # init_weights makes norms ones and biases zeros: give them values that matter
        for name, parameter in model.named_parameters():
            if name.endswith("norm.weight"):
                parameter.uniform_(0.5, 1.5, generator=generator)
            elif name.endswith("bias"):
                parameter.normal_(0.0, 0.2, generator=generator)
    return ModelRunner(model, num_blocks=40, block_size=BLOCK, pack_weights=pack_weights)


def _prefilled(runner: ModelRunner, rows: int) -> list[Request]:
    """`rows` requests whose prompts are in scattered blocks of the cache, each with one new token."""
    generator = torch.Generator().manual_seed(1)
    free = torch.randperm(40, generator=generator).tolist()
    requests = []
    for index, length in enumerate(PROMPT_LENGTHS[:rows]):
        prompt = torch.randint(1, 96, (length,), generator=generator).tolist()
        request = Request(str(index), prompt, SamplingParams(max_tokens=4))
        request.block_ids = [free.pop() for _ in range(-(-(length + 1) // BLOCK))]
        runner.execute([ScheduledChunk(request, 0, length)])
        request.all_token_ids.append(7 + index)
        requests.append(request)
    return requests


@pytest.mark.parametrize("window", [None, 5])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize(("rows", "pack_weights"), [(1, True), (2, True), (4, True), (9, True), (9, False)])
def test_a_decode_step_equals_the_pytorch_layers(rows: int, pack_weights: bool, bias: bool, window: int | None) -> None:
    """Up to SMALL_BATCH_ROWS (4) rows the compiled products; 9 rows oneDNN's, packed or not."""
    compiled_kernels()
    runner = _runner(bias, window, pack_weights)
    assert runner.step_layers is not None
    requests = _prefilled(runner, rows)
    chunks = [ScheduledChunk(request, request.num_tokens - 1, 1) for request in requests]

    compiled = _compiled_against_reference(runner, chunks)
    assert compiled.shape == (rows, 96)


@pytest.mark.parametrize("window", [None, 5])
@pytest.mark.parametrize(("bias", "pack_weights"), [(False, True), (True, False)])
def test_a_mixed_step_equals_the_pytorch_layers(bias: bool, pack_weights: bool, window: int | None) -> None:
    """Decode rows, a fresh prompt and a chunk after a cached prefix in one step; the prompt is
    longer than the window and than the prefill kernel's 32-token tiles."""
    compiled_kernels()
    runner = _runner(bias, window, pack_weights)
    assert runner.step_layers is not None and runner.prefill_kernel
    decoding = _prefilled(runner, 3)
    free = sorted(set(range(40)) - {block for request in decoding for block in request.block_ids}, reverse=True)
    fresh = Request("fresh", list(range(1, 38)), SamplingParams(max_tokens=4))
    fresh.block_ids = [free.pop() for _ in range(10)]
    chunked = Request("chunked", list(range(40, 58)), SamplingParams(max_tokens=4))
    chunked.block_ids = [free.pop() for _ in range(5)]
    runner.execute([ScheduledChunk(chunked, 0, 6)])  # its first 6 tokens are in the cache
    chunks = [ScheduledChunk(request, request.num_tokens - 1, 1) for request in decoding]
    chunks += [ScheduledChunk(fresh, 0, 37), ScheduledChunk(chunked, 6, 12)]

    compiled = _compiled_against_reference(runner, chunks)
    assert compiled.shape == (5, 96)


def _compiled_against_reference(runner: ModelRunner, chunks: list[ScheduledChunk]) -> torch.Tensor:
    """The step's logits through StepLayers, after asserting that the same step through PyTorch
    ops (rewriting the same cache slots) gives the same logits, greedy tokens and cache writes."""
    assert sum(chunk.num_tokens for chunk in chunks) <= runner.step_layers_rows  # the compiled layers take it
    compiled, _ = runner.execute(chunks)
    compiled_cache = [cache.clone() for cache in runner.k_cache + runner.v_cache]
    runner.step_layers = runner.kernels = None
    runner.prefill_kernel = False
    reference, _ = runner.execute(chunks)

    torch.testing.assert_close(compiled, reference, rtol=1e-4, atol=1e-4)
    for written, expected in zip(compiled_cache, runner.k_cache + runner.v_cache, strict=True):
        torch.testing.assert_close(written, expected, rtol=1e-5, atol=1e-5)
    assert compiled.argmax(-1).tolist() == reference.argmax(-1).tolist()
    return compiled


def test_the_compiled_rms_norm_equals_f_rms_norm() -> None:
    kernels = compiled_kernels()
    generator = torch.Generator().manual_seed(3)
    hidden, weight = torch.randn(5, 72, generator=generator) * 3, torch.rand(72, generator=generator) + 0.5
    expected = torch.nn.functional.rms_norm(hidden, (72,), weight, 1e-5)
    torch.testing.assert_close(kernels.rms_norm(hidden, weight, 1e-5), expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(RuntimeError, match="rms_norm"):
        kernels.rms_norm(hidden, weight[:70], 1e-5)


def test_the_rotary_tables_hold_the_models_rotation_and_grow_to_any_position() -> None:
    compiled_kernels()
    runner = _runner(bias=False, window=None, pack_weights=True)
    positions = torch.tensor([0, 5, 1500, 3, 1023, 1024])
    cos, sin = runner._rotation(positions, 1500, torch.float32)
    assert runner._rotary_cos.shape[0] >= 1501  # grew past its first 1,024 rows
    expected_cos, expected_sin = runner.model.model.rotary(positions[None], torch.float32)
    torch.testing.assert_close(cos, expected_cos[0, 0], rtol=0, atol=1e-6)
    torch.testing.assert_close(sin, expected_sin[0, 0], rtol=0, atol=1e-6)
