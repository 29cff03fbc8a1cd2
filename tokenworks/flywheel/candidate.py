"""The candidate: a LoRA fine-tune (`tokenworks train sft --lora`) of the current champion.

A champion that is a base checkpoint gets a fresh adapter; a champion that is itself an adapter
is continued (the new adapter starts from its tensors, on the same base), so each candidate is
the champion plus what the new traffic taught. Steps are bounded (TrainSettings.max_steps), so
an iteration's training takes a minute or two on 2 cores for the factory's model. Imports torch,
inside the function, like `tokenworks train`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenworks.errors import ConfigError
from tokenworks.flywheel.loop_config import TrainSettings
from tokenworks.flywheel.registry import ModelVersion

EVALUATED_ONCE = 2**31  # an evaluation interval no candidate reaches: its loss is taken once, at the end


@dataclass(frozen=True, slots=True)
class Candidate:
    adapter: Path  # the adapter directory (PEFT layout) to register
    base: Path  # the checkpoint it adapts
    run: Path  # the training run's directory (run.json, metrics.jsonl)
    steps: int
    seconds: float
    final_loss: float | None


def base_of(champion: ModelVersion) -> Path:
    """The checkpoint a champion runs on: itself, or the base its adapter names."""
    if champion.kind == "checkpoint":
        return Path(champion.path)
    assert champion.base_path is not None, "the registry records every adapter's base"
    return Path(champion.base_path)


def train_candidate(
    champion: ModelVersion, train: Path, validation: Path | None, out: Path, settings: TrainSettings,
    on_event: Callable[[dict[str, Any]], None] | None = None, pretraining: Path | None = None,
) -> Candidate:  # fmt: skip
    """`pretraining`: the ingest output whose train split `settings.replay_fraction` of each batch replays."""
    from tokenworks.train.config import LoopConfig, LoraConfig, OptimConfig, SFTConfig
    from tokenworks.train.sft import run_sft

    if settings.replay_fraction > 0 and pretraining is None:
        raise ConfigError("[train] replay_fraction replays [evaluate] data's train split: set [evaluate] data")

    steps = settings.max_steps or None  # None: as many as the time budget allows, the schedule sized to it
    loop = LoopConfig(
        out=out, context=settings.context, batch_size=settings.batch_size, max_steps=steps,
        time_budget_s=settings.time_budget_s or None,
        eval_interval=steps or EVALUATED_ONCE, eval_tokens=8192, seed=settings.seed, device=settings.device,
        dtype="float32", peak_seconds=0.1,
        optim=OptimConfig(lr=settings.lr, warmup_steps=min(settings.warmup, steps - 1) if steps else settings.warmup),
    )  # fmt: skip
    lora = LoraConfig(settings.rank, settings.alpha, 0.0, settings.targets)
    config = SFTConfig(
        base=base_of(champion), data=train, validation=validation, lora=lora, loop=loop,
        init_adapter=Path(champion.path) if champion.kind == "lora" else None,
        replay_data=pretraining if settings.replay_fraction > 0 else None, replay_fraction=settings.replay_fraction,
    )  # fmt: skip
    run = run_sft(config, on_event)
    final = run.record.get("final") or {}
    return Candidate(
        run.checkpoint, base_of(champion), out, run.record["steps"], run.record["train_seconds"],
        final.get("train_loss"),
    )  # fmt: skip
