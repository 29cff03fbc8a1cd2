"""Supervised fine-tuning of a checkpoint on chat JSONL: full weights or LoRA, loss on assistant
tokens only, conversations packed into rows of the context length.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import torch

from tokenworks.errors import TrainError
from tokenworks.model.checkpoint import iter_tensors, load_model, load_weights, save_model
from tokenworks.model.config import ModelConfig
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
from tokenworks.train.config import SFTConfig
from tokenworks.train.data import WindowSampler, check_token_range, open_shards
from tokenworks.train.distributed import DistInfo, barrier, init_distributed
from tokenworks.train.loop import Event, TrainLoop
from tokenworks.train.lora import apply_lora, load_adapter, merge_lora, read_adapter_config
from tokenworks.train.optim import build_optimizer
from tokenworks.train.records import MetricsLog
from tokenworks.train.replay import ReplaySampler, replay_rows
from tokenworks.train.session import RunRecord, check_context, check_out_dir, matmul_peak, write_records
from tokenworks.train.sft_data import (
    PackedRows,
    RowSampler,
    pack,
    read_chat_jsonl,
    sft_eval_batches,
    tokenize_conversation,
)

MERGED_DIR = "merged"


def load_base(base: Path) -> tuple[ModelConfig, Tokenizer]:
    """The base checkpoint's config and tokenizer, checked against each other."""
    if not (base / "config.json").is_file():
        raise TrainError(f"{base} is not a model directory (no config.json): pass --base a Hugging Face checkpoint")
    config = ModelConfig.load(base)
    tokenizer = Tokenizer.load(base)
    if tokenizer.vocab_size > config.vocab_size:
        raise TrainError(
            f"the tokenizer in {base} has {tokenizer.vocab_size} tokens but the model's vocabulary is only "
            f"{config.vocab_size}: the two do not belong together"
        )
    if tokenizer.chat_template is None:
        raise TrainError(f"the tokenizer in {base} has no chat template, so chat data cannot be rendered")
    return config, tokenizer


def tokenized_rows(path: Path, tokenizer: Tokenizer, context: int, seed: int) -> PackedRows:
    examples = [tokenize_conversation(tokenizer, messages) for messages in read_chat_jsonl(path)]
    return pack(examples, context, tokenizer.pad_token_id, seed)


def run_sft(config: SFTConfig, on_event: Event | None = None) -> RunRecord:
    """Fine-tune `config.base` on `config.data`; write OUT/checkpoint (model or adapter) and the records."""
    loop = config.loop
    loop.check()
    if config.lora is not None:
        config.lora.check()
    if config.init_adapter is not None:  # the adapter's own shape: a continuation cannot change rank or targets
        if config.lora is None:
            raise TrainError("--init-adapter needs LoRA: it is the adapter training starts from")
        config = replace(config, lora=replace(read_adapter_config(config.init_adapter)[0], dropout=config.lora.dropout))
    if config.merge and config.lora is None:
        raise TrainError("--merge needs LoRA (--lora-rank): a full fine-tune already saves a plain checkpoint")
    model_config, tokenizer = load_base(config.base)
    check_context(model_config, loop.context)
    train_rows = tokenized_rows(config.data, tokenizer, loop.context, loop.seed)
    eval_rows = tokenized_rows(config.validation, tokenizer, loop.context, loop.seed) if config.validation else None
    check_out_dir(loop.out, loop.resume)
    state = None
    if loop.resume:
        state = read_state(loop.out)
        check_resume_shape(state, model_config, config.lora, loop.out)
    info, device = init_distributed(loop.device)
    if loop.max_steps is None and loop.time_budget_s is None:  # default: whole epochs
        rows_per_step = loop.batch_size * loop.grad_accum * info.world_size
        loop = replace(loop, max_steps=max(1, math.ceil((config.epochs or 1) * len(train_rows) / rows_per_step)))
    torch.manual_seed(loop.seed)  # LoRA's A matrices and dropout draw from torch's generator

    model = load_model(config.base, dtype="float32")
    if config.lora is not None:
        start = loop.out / CHECKPOINT_DIR if state else config.init_adapter
        model = load_adapter(model, start) if start is not None else apply_lora(model, config.lora)
    elif state is not None:
        load_weights(model, iter_tensors(loop.out / CHECKPOINT_DIR))
    model.to(device).train()
    optimizer = build_optimizer(model, loop.optim, device)
    sampler: RowSampler | ReplaySampler = RowSampler(train_rows, loop.seed, info.rank, info.world_size)
    if config.replay_fraction > 0:
        sampler = replay_sampler(config, sampler, model_config, info)
    progress = Progress()
    if state is not None:
        progress = restore(state, optimizer)
        sampler.load_state_dict(state["sampler"])
    metrics = MetricsLog(loop.out, truncate=state is None) if info.is_main else None
    if metrics is not None and state is not None:
        metrics.drop_after(progress.step)
    peak = matmul_peak(loop, info, device)
    base_name = str(config.base.resolve())

    def save(current: Progress) -> None:
        if info.is_main:
            save_checkpoint(
                loop.out, model, tokenizer, optimizer, sampler.state_dict(), current, config.lora, base_name
            )
        barrier()

    eval_batches = sft_eval_batches(eval_rows) if eval_rows is not None else []
    trainer = TrainLoop(model, optimizer, sampler, eval_batches, loop, device, info, save, metrics, on_event)
    result = trainer.run(progress)
    if not info.is_main or metrics is None:
        return RunRecord({}, loop.out)
    data_record = {
        "path": str(config.data),
        "rows": len(train_rows),
        "truncated_conversations": train_rows.truncated,
        "target_tokens": int(train_rows.target_mask.sum()),
        "validation": str(config.validation) if config.validation else None,
        "base": base_name,
    }
    settings = replace(config, loop=loop)
    record = write_records("sft", loop, settings, model, model_config, result, info, device, peak, data_record, metrics)
    if config.merge:  # after the records, which count the adapter's parameters as the trained ones
        export_merged(model, tokenizer, loop.out / MERGED_DIR)
    return record


def replay_sampler(config: SFTConfig, sft: RowSampler, model_config: ModelConfig, info: DistInfo) -> ReplaySampler:
    """The SFT rows with `replay_fraction` of every batch drawn from the pretraining train split."""
    if config.replay_data is None:
        raise TrainError("a replay fraction needs the pretraining data to replay: pass the ingest output's directory")
    replay_rows(config.loop.batch_size, config.replay_fraction)  # checks the fraction before any data is read
    shards = open_shards(config.replay_data)
    check_token_range(shards, model_config.vocab_size)
    windows = WindowSampler(shards.train, config.loop.context, config.loop.seed, info.rank, info.world_size)
    return ReplaySampler(sft, windows, config.replay_fraction)


def export_merged(model: CausalLM, tokenizer: Tokenizer, out: Path) -> Path:
    """Fold the adapters into the weights and write a plain Hugging Face checkpoint."""
    merged = merge_lora(model)
    save_model(merged, out)
    tokenizer.save(out)
    return out


def merge_adapter(adapter: Path, out: Path, base: Path | None = None) -> Path:
    """`tokenworks train merge-lora`: base + saved adapter -> plain checkpoint in `out`."""
    _, recorded = read_adapter_config(adapter)
    base = base or (Path(recorded) if recorded else None)
    if base is None or not (base / "config.json").is_file():
        raise TrainError(
            f"the base model of {adapter} ({base or 'not recorded'}) is not a model directory: pass --base"
        )
    model = load_adapter(load_model(base, dtype="float32"), adapter)
    tokenizer = Tokenizer.load(adapter if (adapter / "tokenizer.json").is_file() else base)
    return export_merged(model, tokenizer, out)
