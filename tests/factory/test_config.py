"""factory.toml: overrides apply, mistakes are named, and resumption follows the settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from tokenworks.errors import ConfigError
from tokenworks.factory.config import FactoryConfig
from tokenworks.factory.state import FactoryState


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "factory.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_a_file_overrides_only_what_it_names(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        'workdir = "run"\n[data]\nsources = ["docs"]\nmax_documents = 10\n'
        '[train]\npreset = "micro"\ntime_budget_s = 60\n[bench]\nconcurrency = [1, 2]\nslo = "ttft=2s"\n',
    )
    config = FactoryConfig.load(path)
    assert config.workdir == tmp_path / "run"
    assert config.data.sources == [str(tmp_path / "docs")] and config.data.max_documents == 10
    assert (config.train.preset, config.train.time_budget_s, config.train.context) == ("micro", 60.0, 256)
    assert (config.bench.concurrency, config.bench.slo, config.bench.output_tokens) == ([1, 2], "ttft=2s", "64")


def test_quick_defaults_are_the_base_of_a_quick_file(tmp_path: Path) -> None:
    config = FactoryConfig.load(write(tmp_path, "[train]\nseed = 3\n"), quick=True, workdir=tmp_path / "w")
    assert config.train.time_budget_s == FactoryConfig.quick().train.time_budget_s
    assert (config.train.seed, config.workdir) == (3, tmp_path / "w")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[trian]\nseed = 1\n", "unknown setting 'trian'"),
        ("[train]\nsed = 1\n", "unknown setting 'sed' in"),
        ('[train]\ntime_budget_s = "long"\n', "time_budget_s should be float, got 'long'"),
        ("[bench]\nconcurrency = [1.5]\n", "concurrency should be list[int]"),
        ("[bench]\nconcurrency = []\n", "bench.concurrency must list positive numbers"),
        ("[train]\ntime_budget_s = 0\n", "train.time_budget_s must be positive"),
        ("[data\n", "is not valid TOML"),
    ],
)
def test_mistakes_are_named(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")):
        FactoryConfig.load(write(tmp_path, text))


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no factory configuration at"):
        FactoryConfig.load(tmp_path / "absent.toml")


def test_a_changed_setting_reruns_from_the_first_stage_it_affects(tmp_path: Path) -> None:
    config = FactoryConfig.quick(workdir=tmp_path)
    state = FactoryState(tmp_path)
    for stage in ("ingest", "train", "serve", "bench", "report"):
        state.record(config, stage, 1.0, {"stage": stage}, None)
    reloaded = FactoryState(tmp_path)
    assert reloaded.first_to_run(config, None) == 5
    assert reloaded.first_to_run(config, "bench") == 3

    config.bench.slo = "ttft=5s"
    assert reloaded.first_to_run(config, None) == 3  # ingest, train and serve still hold
    config.data.vocab_size = 1024
    assert reloaded.first_to_run(config, None) == 0


def test_a_failed_stage_keeps_the_ones_before_and_drops_the_ones_after(tmp_path: Path) -> None:
    config = FactoryConfig.quick(workdir=tmp_path)
    state = FactoryState(tmp_path)
    for stage in ("ingest", "train", "serve"):
        state.record(config, stage, 1.0, {}, None)
    state.record(config, "train", 2.0, {}, "out of memory")
    reloaded = FactoryState(tmp_path)
    assert set(reloaded.stages) == {"ingest", "train"}
    assert reloaded.stages["train"].error == "out of memory"
    assert reloaded.first_to_run(config, None) == 1


def test_the_example_configuration_is_valid() -> None:
    example = Path(__file__).resolve().parents[2] / "examples" / "factory.toml"
    config = FactoryConfig.load(example)
    assert config.workdir == example.parent / "../factory-mine"
    assert config.data.sources == [str(example.parent / "../docs")]
    assert config.bench.hardware == "CPU host" and config.train.preset == "nano"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[train]\npreset = "huge"\n', "unknown model preset 'huge' in train.preset"),
        ('[bench]\nslo = "ttfb=1s"\n', "in [bench]: unknown SLO key 'ttfb'"),
        ('[bench]\noutput_tokens = "lots"\n', "in [bench]: bad length 'lots'"),
        ('[bench]\nhardware = "abacus"\n', "in [bench]: no hardware 'abacus'"),
    ],
)
def test_names_the_late_stages_use_are_checked_before_any_work(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        FactoryConfig.load(write(tmp_path, text))


def test_from_a_stage_whose_inputs_are_missing_is_refused(tmp_path: Path) -> None:
    config = FactoryConfig.quick(workdir=tmp_path)
    state = FactoryState(tmp_path)
    state.record(config, "ingest", 1.0, {}, None)
    assert state.first_to_run(config, "train") == 1
    with pytest.raises(ConfigError, match="cannot start at 'bench': 'train' has not finished"):
        state.first_to_run(config, "bench")
