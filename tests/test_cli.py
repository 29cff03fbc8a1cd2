"""The `tokenworks` command as a user runs it: a real subprocess, real exit codes."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tokenworks import __version__
from tokenworks.model import CausalLM, Tokenizer, preset_config, save_model


def tokenworks(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tokenworks", *args], capture_output=True, text=True, timeout=300, cwd=cwd
    )


def test_help_lists_every_area() -> None:
    result = tokenworks("--help")
    assert result.returncode == 0
    for command in ("version", "model", "factory"):
        assert command in result.stdout


def test_version() -> None:
    result = tokenworks("version")
    assert (result.returncode, result.stdout) == (0, f"tokenworks {__version__}\n")


@pytest.mark.parametrize("command", ["info", "generate"])
def test_missing_model_directory_is_one_line_not_a_traceback(command: str, tmp_path) -> None:
    result = tokenworks("model", command, str(tmp_path / "absent"))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "error:" in result.stderr and "absent" in result.stderr


def test_generate_without_a_tokenizer_says_what_is_missing(tmp_path) -> None:
    save_model(CausalLM(preset_config("nano", 300)).init_weights(), tmp_path)
    result = tokenworks("model", "generate", str(tmp_path))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "tokenizer.json not found" in result.stderr


def test_info_and_generate_on_a_checkpoint(tokenizer: Tokenizer, tmp_path) -> None:
    config = preset_config("nano", tokenizer.vocab_size, eos_token_id=tokenizer.eos_token_id)
    save_model(CausalLM(config).init_weights(seed=1, std=0.5), tmp_path)
    tokenizer.save(tmp_path)
    info = tokenworks("model", "info", str(tmp_path))
    assert info.returncode == 0
    assert "LlamaForCausalLM" in info.stdout and f"{config.num_parameters():,}" in info.stdout
    generated = tokenworks("model", "generate", str(tmp_path), "--prompt", "Return the", "--max-tokens", "5")
    assert generated.returncode == 0, generated.stderr
    assert generated.stdout.startswith("Return the") and len(generated.stdout) > len("Return the\n")


def test_bad_option_values_are_usage_errors(tmp_path) -> None:
    config = tmp_path / "factory.toml"
    config.write_text('[train]\npreset = "huge"\n', encoding="utf-8")
    result = tokenworks("factory", "--config", str(config), "--quick", "--workdir", str(tmp_path))
    assert result.returncode == 1 and "[train] preset: unknown model preset 'huge'" in result.stderr
    assert "Traceback" not in result.stderr
    usage = tokenworks("model", "generate", str(tmp_path), "--max-tokens", "0")
    assert usage.returncode == 2 and "Traceback" not in usage.stderr
