"""Step-latency models with known answers, and the simulator's parts wired for tests."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from tokenworks.plan.clock import SimClock
from tokenworks.plan.prompts import SimPrompts
from tokenworks.plan.replica import Replica, ReplicaConfig
from tokenworks.plan.step import StepShape


@dataclass(frozen=True)
class LinearLatency:
    """A fixed cost per step plus a cost per token computed."""

    fixed: float
    per_token: float

    def step_seconds(self, step: StepShape) -> float:
        return self.fixed + self.per_token * step.num_tokens


def replicas(count: int, latency, clock: SimClock, kv_events: bool = False, **config) -> list[Replica]:
    settings = dict(num_kv_blocks=256, block_size=16, max_model_len=2048) | config
    return [Replica(ReplicaConfig(**settings), latency, clock, kv_events=kv_events) for _ in range(count)]


@pytest.fixture(scope="session")
def sim_prompts(tokenizer) -> SimPrompts:
    return SimPrompts(tokenizer, seed=0)


@pytest.fixture(scope="session")
def nano_model_dir(tmp_path_factory, tokenizer):
    """A nano checkpoint with the shared test tokenizer (random weights: only shapes and ids matter)."""
    from tokenworks.model import CausalLM, preset_config, save_model

    directory = tmp_path_factory.mktemp("plan-nano")
    config = preset_config("nano", tokenizer.vocab_size, eos_token_id=tokenizer.eos_token_id)
    save_model(CausalLM(config).init_weights(seed=0, std=0.1), directory)
    tokenizer.save(directory)
    return directory


def write_profile(model_dir, path, block_size: int = 16) -> None:
    """A profile of `model_dir` whose steps took 1 ms + 20 us a token + 10 us a request (a stand-in
    for `tokenworks plan profile`, which takes minutes)."""
    from tokenworks.model.config import ModelConfig
    from tokenworks.plan.profiles import Profile, Sample, config_hash

    config = ModelConfig.load(model_dir)
    shapes = [((1, 64),), ((1, 64),) * 8, ((1, 128),) * 32, ((16, 0),), ((128, 0),), ((64, 64), (1, 32), (1, 32))]
    samples = [
        Sample(f"shape {i}", StepShape(shape, len(shape)), 1e-3 + 2e-5 * sum(n for n, _ in shape) + 1e-5 * len(shape))
        for i, shape in enumerate(shapes)
    ]
    Profile(
        machine={"cpu": "test", "cores": 2, "threads": 2}, model=config, model_hash=config_hash(config),
        engine={"block_size": block_size, "max_num_batched_tokens": 2048, "max_num_seqs": 256},
        matmul_flops={"float32": 2e10}, peak_flops=2e10, bandwidth={"read": 1e10, "copy": 1e10},
        peak_bandwidth=1e10, samples=samples, created="test",
    ).save(path)  # fmt: skip
