"""The fast mode: its step arithmetic equals the latency models', and it agrees with the exact mode."""

from __future__ import annotations

import random

import numpy as np
import pytest

from tests.plan.conftest import write_profile
from tokenworks.bench.loadgen import LoadOptions
from tokenworks.bench.workloads import WorkloadOptions
from tokenworks.model.config import ModelConfig
from tokenworks.plan.agreement import compare
from tokenworks.plan.fast import FastEngine, FastRequests, run_replica
from tokenworks.plan.fast_cli import simulate_fast
from tokenworks.plan.fast_load import FastLoad, Sends
from tokenworks.plan.fast_workload import cached_blocks
from tokenworks.plan.latency import ConstantLatency, DatasheetLatency, FittedLatency
from tokenworks.plan.linear_step import LinearStep, StepTotals
from tokenworks.plan.simulate import Fleet, replica_config
from tokenworks.plan.step import StepShape

LLAMA_8B = {
    "architectures": ["LlamaForCausalLM"], "hidden_size": 4096, "intermediate_size": 14336,
    "num_attention_heads": 32, "num_key_value_heads": 8, "num_hidden_layers": 32, "vocab_size": 128256,
    "max_position_embeddings": 131072, "torch_dtype": "bfloat16", "tie_word_embeddings": False,
}  # fmt: skip


@pytest.fixture(scope="module")
def fitted(nano_model_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("fast-profile") / "profile.json"
    write_profile(nano_model_dir, path)
    return FittedLatency.from_profile(path)


def _shapes(count: int, seed: int = 0) -> list[StepShape]:
    rng = random.Random(seed)
    shapes = []
    for _ in range(count):
        chunks = tuple(
            (rng.choice([1, 1, 1, rng.randint(2, 600)]), rng.randint(0, 3000)) for _ in range(rng.randint(1, 40))
        )
        shapes.append(StepShape(chunks, rng.randint(0, len(chunks))))
    return shapes


def test_linear_step_prices_a_step_as_each_latency_model_does(fitted) -> None:
    config = ModelConfig.from_hf_dict(LLAMA_8B)
    models = [
        fitted, ConstantLatency(0.003), DatasheetLatency("H100", config, tp=1),
        DatasheetLatency("H200", config, tp=4), DatasheetLatency("B200", config, tp=2, precision="fp8"),
    ]  # fmt: skip
    for latency in models:
        linear = LinearStep.of(latency)
        window = getattr(getattr(latency, "config", None), "sliding_window", None)
        for shape in _shapes(50):
            expected = latency.step_seconds(shape)
            assert linear.of_totals(StepTotals.of(shape, window)) == pytest.approx(expected, rel=1e-12)


def test_a_decode_run_sums_its_steps_in_closed_form(fitted) -> None:
    """decode_run's linear pieces give each step's time: max(c + cj j, m + mj j) + overhead."""
    linear = LinearStep.of(DatasheetLatency("H100", ModelConfig.from_hf_dict(LLAMA_8B)))
    contexts = [300, 1200, 5000]
    c, cj, m, mj, overhead = linear.decode_run(3, sum(x + 1 for x in contexts))
    for j in range(5):
        shape = StepShape(tuple((1, x + j) for x in contexts), 3)
        assert max(c + cj * j, m + mj * j) + overhead == pytest.approx(
            linear.of_totals(StepTotals.of(shape)), rel=1e-12
        )


def test_cached_blocks_are_the_leading_blocks_an_earlier_prompt_had() -> None:
    shared = list(range(8))
    prompts = [[*shared, 100, 101, 102], [*shared, 200, 201, 202, 203], [*shared[:4], 9, 9, 9, 9], shared]
    # Block size 4: the second prompt finds both of the first's shared blocks; the third the first
    # block only; the fourth is all cached, so one block is left to compute (the engine's rule).
    assert cached_blocks(prompts, 4) == [0, 8, 4, 4]


def test_a_closed_loop_of_one_at_constant_step_time_is_exact() -> None:
    """Concurrency 1, 1 ms a step: each request is one prefill step and n_out - 1 decode steps."""
    requests = FastRequests(np.array([100, 50]), np.array([5, 3]), np.array([0, 0]))
    engine = FastEngine(num_kv_blocks=100, block_size=16)
    run = run_replica(engine, LinearStep.of(ConstantLatency(1e-3)), requests, Sends(FastLoad(2, concurrency=1)))
    assert run.steps == 5 + 3
    assert run.first_token.tolist() == pytest.approx([1e-3, 6e-3])
    assert run.last_token.tolist() == pytest.approx([5e-3, 8e-3])
    assert run.sent.tolist() == pytest.approx([0.0, 5e-3])


@pytest.mark.parametrize("lengths", [("64", "32"), ("16:200", "4:64")])
def test_fast_mode_agrees_with_exact_mode_on_a_concurrency_and_a_poisson_sweep(
    nano_model_dir, fitted, sim_prompts, lengths
) -> None:
    config = ModelConfig.load(nano_model_dir)
    fleet = Fleet(replica_config(config, block_size=16, num_kv_blocks=4096), fitted)
    workload = WorkloadOptions(api="chat", input_tokens=lengths[0], output_tokens=lengths[1])
    base = LoadOptions(num_requests=48, warmup_requests=2, seed=3)
    points = [(1, None), (8, None), (32, None), (None, 20.0), (None, 200.0)]
    rows = compare(fleet, sim_prompts, workload, base, [points[0], points[1], points[2]]) + compare(
        fleet, sim_prompts, workload, base, [points[3], points[4]]
    )
    assert len(rows) == 5 * 3
    worst = max(rows, key=lambda row: abs(row.error))
    assert abs(worst.error) <= 0.05, worst


def test_fast_mode_agrees_with_exact_mode_when_the_kv_cache_limits_the_batch(
    nano_model_dir, fitted, sim_prompts
) -> None:
    """A cache of 40 blocks of 16 tokens, prompts of up to ~250 tokens: admissions wait for room
    and running requests are preempted, in both modes."""
    config = ModelConfig.load(nano_model_dir)
    fleet = Fleet(replica_config(config, block_size=16, num_kv_blocks=40), fitted)
    workload = WorkloadOptions(api="chat", input_tokens="16:200", output_tokens="4:64")
    base = LoadOptions(num_requests=64, warmup_requests=2, seed=3)
    points = [(8, None), (16, None), (None, 400.0)]
    assert all(run.stats.preemptions > 0 for run in simulate_fast(fleet, sim_prompts, workload, base, points))
    rows = compare(fleet, sim_prompts, workload, base, points)
    worst = max(rows, key=lambda row: abs(row.error))
    assert abs(worst.error) <= 0.10, worst
