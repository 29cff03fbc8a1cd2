"""factory.toml: overrides apply, mistakes are named, and resumption follows the settings."""

from __future__ import annotations

import subprocess
import sys
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
        ("[trian]\nseed = 1\n", "unknown setting 'trian'; known: bench, data, flywheel, plan, serve, train, workdir"),
        ("[train]\nsed = 1\n", "[train] unknown setting 'sed'; known: batch_size, context, lr, preset, seed,"),
        ('[train]\ntime_budget_s = "long"\n', "[train] time_budget_s: input should be a valid number, got 'long'"),
        ("[train]\nseed = true\n", "[train] seed: input should be a valid integer, got True"),
        ("[bench]\nconcurrency = [1.5]\n", "[bench] concurrency[0]: input should be a valid integer, got 1.5"),
        ("[bench]\nconcurrency = []\n", "[bench] concurrency: list should have at least 1 item"),
        ("[bench]\nconcurrency = [4, 0]\n", "[bench] concurrency[1]: input should be greater than or equal to 1"),
        ("[train]\ntime_budget_s = 0\n", "[train] time_budget_s: input should be greater than 0, got 0"),
        ("[data]\nmax_documents = 0\n", "[data] max_documents: input should be greater than or equal to 1"),
        ('[data]\nsources = "docs"\n', "[data] sources: input should be a valid list, got 'docs'"),
        ("train = 3\n", "[train] should be a table of settings, got 3"),
        ("[train]\nseed = 1.5\nlr = 0\n", "[train] lr: input should be greater than 0, got 0 (and 1 more)"),
        ("[data\n", "is not valid TOML"),
    ],
)
def test_mistakes_are_one_line_naming_the_file_and_the_key(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        FactoryConfig.load(path)
    assert str(caught.value).startswith(str(path)) and message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no factory configuration at"):
        FactoryConfig.load(tmp_path / "absent.toml")


def test_the_fleet_and_the_comparison_have_defaults_and_take_a_file(tmp_path: Path) -> None:
    default, quick = FactoryConfig(), FactoryConfig.quick()
    assert (default.serve.workers, default.serve.router_policy) == (2, "kv")
    assert default.bench.shared_prefix_policies == ["kv", "round-robin"]
    sizes = ("num_prefixes", "questions_per_prefix", "prefix_tokens", "question_tokens", "shared_prefix_concurrency")
    assert [getattr(default.bench, name) for name in sizes] == [8, 8, 512, "32", 8]
    assert [getattr(quick.bench, name) for name in sizes] == [4, 4, 256, "16", 4]
    text = '[serve]\nworkers = 1\n[bench]\nshared_prefix_policies = ["p2c"]\nnum_prefixes = 2\n'
    config = FactoryConfig.load(write(tmp_path, text), quick=True)
    assert (config.serve.workers, config.bench.shared_prefix_policies) == (1, ["p2c"])
    assert (config.bench.num_prefixes, config.bench.questions_per_prefix) == (2, 4)  # the rest: quick's


def test_a_changed_setting_reruns_from_the_first_stage_it_affects(tmp_path: Path) -> None:
    config = FactoryConfig.quick(workdir=tmp_path)
    state = FactoryState(tmp_path)
    for stage in ("ingest", "train", "serve", "bench", "flywheel", "plan", "report"):
        state.record(config, stage, 1.0, {"stage": stage}, None)
    reloaded = FactoryState(tmp_path)
    assert reloaded.first_to_run(config, None) == 7
    assert reloaded.first_to_run(config, "bench") == 3

    config.flywheel.train_steps = 4
    assert reloaded.first_to_run(config, None) == 4  # only the flywheel and what follows it

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
        ('[train]\npreset = "huge"\n', "[train] preset: unknown model preset 'huge'; choose one of nano,"),
        ('[bench]\nslo = "ttfb=1s"\n', "[bench] slo: unknown SLO key 'ttfb'"),
        ('[bench]\noutput_tokens = "lots"\n', "[bench] output_tokens: bad length 'lots'"),
        ('[bench]\nhardware = "abacus"\n', "[bench] hardware: no hardware 'abacus'"),
        ('[bench]\nprice_book = "absent.toml"\n', "[bench] price_book: cannot read price book"),
        ('[serve]\nrouter_policy = "fastest"\n', "[serve] router_policy: unknown router policy 'fastest'; choose"),
        ('[bench]\nshared_prefix_policies = ["kv", "lru"]\n', "[bench] shared_prefix_policies: unknown router "),
        ('[bench]\nshared_prefix_policies = ["kv", "kv"]\n', "[bench] shared_prefix_policies: a policy is named"),
        ('[bench]\nquestion_tokens = "lots"\n', "[bench] question_tokens: bad length 'lots'"),
        ("[serve]\nworkers = 0\n", "[serve] workers: input should be greater than or equal to 1, got 0"),
    ],
)
def test_names_the_late_stages_use_are_checked_before_any_work(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        FactoryConfig.load(path)
    assert str(caught.value).startswith(f"{path}: {message}")


def test_a_price_book_beside_the_file_is_found_and_its_hardware_checked(tmp_path: Path) -> None:
    book = '[[hardware]]\nname = "abacus"\nusd_per_hour = 0.01\ntdp_watts = 1.0\nsource = "a guess"\ndate = "2025-01"\n'
    (tmp_path / "prices.toml").write_text(book, encoding="utf-8")
    config = FactoryConfig.load(write(tmp_path, '[bench]\nprice_book = "prices.toml"\nhardware = "abacus"\n'))
    assert config.bench.price_book == str(tmp_path / "prices.toml")


def test_a_configuration_changed_in_code_is_checked_again() -> None:
    config = FactoryConfig.quick()
    config.check()
    config.bench.slo = "ttfb=1s"
    with pytest.raises(ConfigError, match=r"^factory settings: \[bench\] slo: unknown SLO key 'ttfb'"):
        config.check()


@pytest.fixture(scope="module")
def bad_file_run(tmp_path_factory) -> tuple[Path, str]:
    """`tokenworks factory --config` on a file with a wrong type: (the file, what the user reads on stderr)."""
    directory = tmp_path_factory.mktemp("bad-config")
    path = write(directory, '[train]\ntime_budget_s = "long"\n')
    command = [sys.executable, "-m", "tokenworks", "factory", "--config", str(path), "--workdir", str(directory / "w")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and not (directory / "w").exists()
    return path, " ".join(result.stderr.split())  # rich wraps long lines


def test_a_bad_file_is_one_line_from_the_cli_without_a_traceback(bad_file_run) -> None:
    path, stderr = bad_file_run
    assert "Traceback" not in stderr and stderr.startswith(f"error: {path}:")
    assert "time_budget_s: input should be a valid number, got 'long'" in stderr


def test_the_cli_shows_the_section_of_a_bad_key(bad_file_run) -> None:
    path, stderr = bad_file_run
    assert f"{path}: [train] time_budget_s:" in stderr


def test_from_a_stage_whose_inputs_are_missing_is_refused(tmp_path: Path) -> None:
    config = FactoryConfig.quick(workdir=tmp_path)
    state = FactoryState(tmp_path)
    state.record(config, "ingest", 1.0, {}, None)
    assert state.first_to_run(config, "train") == 1
    with pytest.raises(ConfigError, match="cannot start at 'bench': 'train' has not finished"):
        state.first_to_run(config, "bench")
