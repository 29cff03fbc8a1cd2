"""`flywheel run`'s TOML: defaults, overrides read from the file's directory, and one clear line for
every mistake."""

from __future__ import annotations

from pathlib import Path

import pytest

from tokenworks.errors import ConfigError
from tokenworks.flywheel.gate import GateConfig
from tokenworks.flywheel.loop_config import FlywheelConfig


def load(tmp_path: Path, text: str) -> FlywheelConfig:
    path = tmp_path / "flywheel.toml"
    path.write_text(text)
    return FlywheelConfig.load(path)


def test_the_file_overrides_what_it_names_and_reads_paths_from_its_directory(tmp_path) -> None:
    config = load(
        tmp_path,
        """
workdir = "wheel"
[log]
db = "logs/requests.db"
[labels]
references = ["a.jsonl", "b.jsonl"]
[train]
base = "model"
max_steps = 7
targets = ["q_proj"]
replay_fraction = 0.5
[gate]
margin = 0.2
[flags]
min_mean_logprob = -1
""",
    )
    assert config.workdir == tmp_path / "wheel" and config.log_db == tmp_path / "logs/requests.db"
    assert config.labels.references == (tmp_path / "a.jsonl", tmp_path / "b.jsonl")
    assert (config.train.base, config.train.max_steps, config.train.targets) == (tmp_path / "model", 7, ("q_proj",))
    assert config.train.replay_fraction == 0.5
    assert config.train.lr == FlywheelConfig().train.lr  # what the file leaves out keeps its default
    assert config.gate == GateConfig(margin=0.2)
    assert config.flags.min_mean_logprob == -1.0
    assert config.hard_eval == tmp_path / "wheel" / "hard_eval.jsonl"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[gate]\nmargn = 0.1", "[gate] has unknown key 'margn'; known: margin, tolerance, require_exact_match"),
        ("[train]\nmax_steps = '3'", "[train] max_steps must be an integer, got '3'"),
        ("[labels]\nshuffle = 1", "[labels] shuffle must be a boolean, got 1"),
        ("[gate]\nmargin = 1.5", "[gate]: gate margin must be in [0, 1), got 1.5"),
        ("[train]\nreplay_fraction = 1", "[train]: replay_fraction must be in [0, 1), got 1.0"),
        ("[wheel]\nx = 1", "unknown section or key 'wheel'"),
        ("[log]\npath = 'x'", "[log] has unknown key 'path'; known: db"),
        ("serve = 3", "[serve] must be a table"),
    ],
)
def test_a_mistake_is_one_line_naming_the_key(tmp_path, text, message) -> None:
    with pytest.raises(ConfigError) as error:
        load(tmp_path, text)
    assert message in str(error.value) and str(tmp_path / "flywheel.toml") in str(error.value)
