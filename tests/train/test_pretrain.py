"""Pretraining on real (small) shards: loss falls, exact resume, records, transformers parity, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.train.conftest import nano_config
from tokenworks.model import Tokenizer, load_model
from tokenworks.train.config import ShapeOverrides, TrainError
from tokenworks.train.pretrain import run_pretrain


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_loss_falls_and_the_run_is_recorded(shards_dir: Path, tmp_path: Path) -> None:
    run = run_pretrain(nano_config(shards_dir, tmp_path, max_steps=12, eval_interval=6))
    evals = [r for r in _metrics(tmp_path) if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [0, 6, 12]
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] - 0.5  # from ~ln(512) = 6.2
    train = [r for r in _metrics(tmp_path) if r["kind"] == "train"]
    assert [r["step"] for r in train] == list(range(1, 13))
    assert sum(r["loss"] for r in train[-3:]) < sum(r["loss"] for r in train[:3])

    record = json.loads((tmp_path / "run.json").read_text())
    assert record == run.record
    assert record["steps"] == 12 and record["stopped_by"] == "max_steps"
    assert record["tokens_seen"] == 12 * 4 * 32
    assert record["data"]["manifest_sha256"] and record["config"]["preset"] == "nano"
    assert record["final"]["val_loss"] == pytest.approx(evals[-1]["val_loss"])
    assert record["tokens_per_s"] > 0 and record["flops"]["per_token"] > 0
    assert (tmp_path / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    checkpoint = tmp_path / "checkpoint"
    for name in ("config.json", "model.safetensors", "generation_config.json", "tokenizer.json", "trainer_state.pt"):
        assert (checkpoint / name).is_file(), name


def test_resume_continues_bit_for_bit(shards_dir: Path, tmp_path: Path) -> None:
    straight, split = tmp_path / "straight", tmp_path / "split"
    run_pretrain(nano_config(shards_dir, straight, max_steps=8, eval_interval=3))
    run_pretrain(nano_config(shards_dir, split, max_steps=8, eval_interval=3, stop_at_step=4))
    assert json.loads((split / "run.json").read_text())["stopped_by"] == "stop_at_step"
    run_pretrain(nano_config(shards_dir, split, max_steps=8, eval_interval=3, resume=True))

    losses = {out: [r["loss"] for r in _metrics(out) if r["kind"] == "train"] for out in (straight, split)}
    assert len(losses[straight]) == 8
    assert losses[split] == losses[straight]  # exactly, step by step
    weights = {out: load_file(out / "checkpoint" / "model.safetensors") for out in (straight, split)}
    assert weights[straight].keys() == weights[split].keys()
    for name, tensor in weights[straight].items():
        assert torch.equal(tensor, weights[split][name]), name
    states = {out: torch.load(out / "checkpoint" / "trainer_state.pt", weights_only=True) for out in (straight, split)}
    for key, moments in states[straight]["optimizer"]["state"].items():
        assert torch.equal(moments["exp_avg_sq"], states[split]["optimizer"]["state"][key]["exp_avg_sq"])


def test_checkpoint_logits_in_transformers_equal_tokenworks(trained_checkpoint: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ours = load_model(trained_checkpoint)
    theirs = AutoModelForCausalLM.from_pretrained(trained_checkpoint, dtype=torch.float32).eval()
    tokenizer = Tokenizer.load(trained_checkpoint)
    text = "The Python language reference describes the syntax."
    ids = torch.tensor([tokenizer.encode(text)])
    assert AutoTokenizer.from_pretrained(trained_checkpoint)(text)["input_ids"] == ids[0].tolist()
    with torch.no_grad():
        torch.testing.assert_close(theirs(ids).logits, ours(ids), atol=1e-4, rtol=0)
    # Training moved the weights off their initial values, so this compares a trained model.
    initial = torch.load(trained_checkpoint / "trainer_state.pt", weights_only=True)["progress"]["step"]
    assert initial == 6


def test_tokenizer_larger_than_the_model_is_refused(shards_dir: Path, tmp_path: Path) -> None:
    config = nano_config(shards_dir, tmp_path)
    config.shape = ShapeOverrides(vocab_size=300)
    with pytest.raises(TrainError, match=r"tokenizer has 512 tokens but the model only 300.*--vocab-size"):
        run_pretrain(config)
    assert not (tmp_path / "metrics.jsonl").exists()  # refused before any work


def test_corrupt_shard_is_refused_by_its_hash(shards_copy: Path, tmp_path: Path) -> None:
    shard = shards_copy / "shards" / "train-00000.bin"
    data = bytearray(shard.read_bytes())
    data[100] ^= 0xFF  # same size, different content
    shard.write_bytes(bytes(data))
    with pytest.raises(TrainError, match=r"train-00000\.bin does not match its sha256 in manifest\.json"):
        run_pretrain(nano_config(shards_copy, tmp_path / "out"))


def test_missing_shard_is_refused(shards_copy: Path, tmp_path: Path) -> None:
    (shards_copy / "shards" / "validation-00000.idx").unlink()
    with pytest.raises(TrainError, match=r"validation-00000\.idx is listed in manifest\.json but missing"):
        run_pretrain(nano_config(shards_copy, tmp_path / "out"))


def test_resume_from_a_checkpoint_of_another_shape_is_refused(trained_checkpoint: Path, shards_dir: Path) -> None:
    config = nano_config(shards_dir, trained_checkpoint.parent, resume=True)
    config.shape = ShapeOverrides(hidden=128)  # nano's is 96
    with pytest.raises(TrainError, match=r"cannot resume .* hidden_size=96 but this run asks for hidden_size=128"):
        run_pretrain(config)


def test_a_fresh_run_does_not_overwrite_a_checkpoint(trained_checkpoint: Path, shards_dir: Path) -> None:
    with pytest.raises(TrainError, match="already exists: pass --resume"):
        run_pretrain(nano_config(shards_dir, trained_checkpoint.parent))
