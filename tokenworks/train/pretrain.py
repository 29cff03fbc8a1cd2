"""Pretraining: token shards -> a Llama-family model, from scratch or resumed exactly.

Everything that can be wrong with the input (shards, tokenizer, shapes, a resume target) is
checked before the model is built, so a bad run fails in a second, not after an hour.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from tokenworks.errors import TrainError
from tokenworks.model.checkpoint import iter_tensors, load_weights
from tokenworks.model.config import ModelConfig
from tokenworks.model.presets import PRESETS, preset_config
from tokenworks.model.tokenizer import Tokenizer
from tokenworks.model.transformer import CausalLM
from tokenworks.train.checkpoint import (
    CHECKPOINT_DIR,
    Progress,
    check_resume_shape,
    read_state,
    restore,
    save_checkpoint,
)
from tokenworks.train.config import DEFAULT_PRESET, PretrainConfig
from tokenworks.train.data import ShardData, WindowSampler, check_token_range, open_shards, validation_windows
from tokenworks.train.distributed import barrier, init_distributed
from tokenworks.train.loop import Event, TrainLoop
from tokenworks.train.optim import build_optimizer
from tokenworks.train.records import MetricsLog
from tokenworks.train.session import (
    RunRecord,
    batch_windows,
    check_context,
    check_out_dir,
    matmul_peak,
    write_records,
)

logger = logging.getLogger(__name__)


def model_config_for(config: PretrainConfig, data: ShardData, tokenizer: Tokenizer) -> ModelConfig:
    """The preset (or the default one) with any explicit dimensions applied, sized to the tokenizer."""
    name = config.preset or DEFAULT_PRESET
    if name not in PRESETS:
        raise TrainError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    vocab_size = config.shape.vocab_size or data.vocab_size
    overrides: dict[str, Any] = config.shape.model_fields()
    overrides["max_position_embeddings"] = max(2048, config.loop.context)
    overrides.update(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    try:
        return preset_config(name, vocab_size, **overrides)
    except TrainError:
        raise
    except Exception as error:  # ConfigError from the model's own validation
        raise TrainError(f"the model arguments do not describe a valid model: {error}") from None


def prepare(config: PretrainConfig) -> tuple[ShardData, Tokenizer, ModelConfig, dict[str, Any] | None]:
    """All checks that need no model: shards, tokenizer, vocabulary, shape, output directory, resume."""
    config.loop.check()
    data = open_shards(config.data, verify=config.verify_data)
    tokenizer = Tokenizer.load(data.tokenizer_dir)
    if tokenizer.vocab_size != data.vocab_size:
        raise TrainError(
            f"the tokenizer in {data.tokenizer_dir} has {tokenizer.vocab_size} tokens, the manifest says {data.vocab_size}"
        )
    model_config = model_config_for(config, data, tokenizer)
    check_token_range(data, model_config.vocab_size)
    check_context(model_config, config.loop.context)
    check_out_dir(config.loop.out, config.loop.resume)
    state = None
    if config.loop.resume:
        state = read_state(config.loop.out)
        check_resume_shape(state, model_config, None, config.loop.out)
    return data, tokenizer, model_config, state


def run_pretrain(config: PretrainConfig, on_event: Event | None = None) -> RunRecord:
    """Train (or resume) a model on the shards of `config.data`; write OUT/checkpoint and the records."""
    data, tokenizer, model_config, state = prepare(config)
    loop = config.loop
    info, device = init_distributed(loop.device)
    torch.manual_seed(loop.seed)

    model = CausalLM(model_config).init_weights(loop.seed, config.init_std)
    if state is not None:
        load_weights(model, iter_tensors(loop.out / CHECKPOINT_DIR))
    model.to(device)
    optimizer = build_optimizer(model, loop.optim, device)
    sampler = WindowSampler(data.train, loop.context, loop.seed, info.rank, info.world_size)
    progress = Progress()
    if state is not None:
        progress = restore(state, optimizer)
        sampler.load_state_dict(state["sampler"])
    windows = validation_windows(data.validation, loop.context, loop.eval_tokens) if data.validation else []
    if not windows:
        logger.warning("no validation split in %s: no evaluation loss will be reported", config.data)

    metrics = MetricsLog(loop.out, truncate=state is None) if info.is_main else None
    if metrics is not None and state is not None:
        metrics.drop_after(progress.step)
    peak = matmul_peak(loop, info, device)

    def save(current: Progress) -> None:
        if info.is_main:
            save_checkpoint(loop.out, model, tokenizer, optimizer, sampler.state_dict(), current)
        barrier()

    trainer = TrainLoop(
        model, optimizer, sampler, batch_windows(windows, loop.batch_size), loop, device, info, save, metrics, on_event
    )
    result = trainer.run(progress)
    if not info.is_main or metrics is None:
        return RunRecord({}, loop.out)
    data_record = {
        "path": str(config.data),
        "manifest_sha256": data.manifest_sha256,
        "train_tokens": data.train.tokens,
        "validation_tokens": data.validation.tokens if data.validation else 0,
        "tokenizer_sha256": data.manifest["tokenizer"].get("sha256"),
    }
    return write_records(
        "pretrain", loop, config, model, model_config, result, info, device, peak, data_record, metrics
    )
