"""The first slice of the factory: corpus -> tokenizer -> model -> checkpoint -> tokens."""

from __future__ import annotations

import subprocess
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tokenworks.factory import FactoryOptions, run_factory

EXPECTED_FILES = {
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
}


def test_quick_factory_writes_a_checkpoint_that_transformers_continues_identically(tmp_path) -> None:
    result = run_factory(FactoryOptions.quick(workdir=tmp_path, max_new_tokens=12))
    assert {p.name for p in result.checkpoint.iterdir()} == EXPECTED_FILES
    assert (result.documents_read, result.vocab_size) == (150, 1024)
    assert 0 < result.documents <= 150 and (tmp_path / "data" / "manifest.json").is_file()
    assert len(result.continuation_ids) == 12

    reference = AutoModelForCausalLM.from_pretrained(result.checkpoint, dtype=torch.float32).eval()
    reference_tokenizer = AutoTokenizer.from_pretrained(result.checkpoint)
    prompt_ids = reference_tokenizer(result.prompt, add_special_tokens=False)["input_ids"]
    output = reference.generate(torch.tensor([prompt_ids]), max_new_tokens=12, do_sample=False, eos_token_id=None)
    assert output[0, len(prompt_ids) :].tolist() == result.continuation_ids
    assert reference_tokenizer.decode(result.continuation_ids, skip_special_tokens=True) == result.continuation


def test_factory_is_reproducible(tmp_path) -> None:
    first = run_factory(FactoryOptions.quick(workdir=tmp_path / "a", max_new_tokens=6))
    second = run_factory(FactoryOptions.quick(workdir=tmp_path / "b", max_new_tokens=6))
    assert first.continuation_ids == second.continuation_ids
    assert (tmp_path / "a/model/model.safetensors").read_bytes() == (
        tmp_path / "b/model/model.safetensors"
    ).read_bytes()


def test_factory_command_prints_the_summary_and_continuation(tmp_path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tokenworks", "factory", "--quick", "--workdir", str(tmp_path / "w")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "tokenworks factory" in result.stdout and "Continuation" in result.stdout
    assert (tmp_path / "w/model/model.safetensors").is_file()
