"""`tokenworks plan profile --quick` as a user runs it, the fit of its profile, and bad profiles."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tokenworks.errors import PlanError
from tokenworks.model import CausalLM, preset_config, save_model
from tokenworks.model.config import ModelConfig
from tokenworks.plan.latency import FittedLatency
from tokenworks.plan.profiles import Profile, config_hash


def tokenworks(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tokenworks", *args], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def profiled(tmp_path_factory):
    """A nano checkpoint (random weights: only its shape matters) and its quick profile."""
    directory = tmp_path_factory.mktemp("plan-profile")
    model_dir = directory / "nano"
    save_model(CausalLM(preset_config("nano", 256)).init_weights(seed=0, std=0.02), model_dir)
    out = directory / "profile.json"
    result = tokenworks("plan", "profile", str(model_dir), "--quick", "--threads", "2", "--out", str(out))
    assert result.returncode == 0, result.stderr
    return model_dir, out, result.stdout


def test_quick_profile_measures_every_kind_of_step(profiled) -> None:
    model_dir, out, stdout = profiled
    profile = Profile.load(out)
    config = ModelConfig.load(model_dir)
    assert profile.model_hash == config_hash(config) and profile.model.hidden_size == 96
    assert profile.quick and profile.machine["threads"] == 2 and profile.machine["cores"] >= 1
    assert profile.peak_flops > 1e8 and profile.peak_bandwidth > 1e8
    assert profile.matmul_flops["float32"] == profile.peak_flops
    points = {sample.point: sample for sample in profile.samples}
    # fresh prompts: the step is exactly the chunk, after the prefix cache's whole blocks
    assert points["prefill 128 after 0"].step.chunks == ((128, 0),)
    assert points["prefill 32 after 128"].step.chunks == ((32, 128),)
    # a decode batch: one token each, after at least the batch's prompt
    decode = points["decode 8x64"].step
    assert len(decode.chunks) == 8 and all(n == 1 and c >= 64 for n, c in decode.chunks)
    assert decode.num_samples == 8
    mixed = points["prefill 128 + decode 2x64"].step
    assert sorted(n for n, _ in mixed.chunks) == [1, 1, 128] and mixed.num_samples == 3
    for sample in profile.samples:
        assert len(sample.repeats) == 3 and sample.seconds == sorted(sample.repeats)[1]
    assert "fit error" in stdout and "median" in stdout


def test_the_fit_follows_the_samples_and_refuses_another_model(profiled, capsys) -> None:
    model_dir, out, _ = profiled
    fitted = FittedLatency.from_profile(out, model=model_dir)
    with capsys.disabled():
        print(f"\nquick profile fit: median {fitted.error.median:.1%}, max {fitted.error.max:.1%}: {fitted.describe()}")
    assert fitted.error.median < 0.5  # loose: the machine is shared, and --quick repeats each point 3 times
    profile = Profile.load(out)
    for sample in profile.samples:
        assert fitted.step_seconds(sample.step) > 0
    bigger = ModelConfig.load(model_dir).replace(num_hidden_layers=4)
    with pytest.raises(PlanError, match=r"measured another model .* profile this model with `tokenworks plan profile"):
        FittedLatency.from_profile(out, model=bigger)


def test_missing_and_corrupt_profiles_say_so(profiled, tmp_path) -> None:
    _, out, _ = profiled
    with pytest.raises(PlanError, match=r"no profile at .*; run `tokenworks plan profile MODEL_DIR`"):
        FittedLatency.from_profile(tmp_path / "absent.json")
    broken = tmp_path / "broken.json"
    broken.write_text(out.read_text()[:100])
    with pytest.raises(PlanError, match="cannot be read"):
        Profile.load(broken)
    data = json.loads(out.read_text())
    del data["measured"]["peak_flops"]
    broken.write_text(json.dumps(data))
    with pytest.raises(PlanError, match="lacks 'peak_flops'"):
        Profile.load(broken)
    data = json.loads(out.read_text())
    data["samples"][0]["seconds"] = -1
    broken.write_text(json.dumps(data))
    with pytest.raises(PlanError, match="not a valid profile"):
        Profile.load(broken)


def test_a_wrong_model_directory_is_one_line_not_a_traceback(tmp_path) -> None:
    result = tokenworks("plan", "profile", str(tmp_path / "absent"), "--quick")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and "error:" in result.stderr and "absent" in result.stderr


def test_the_models_and_the_catalog_import_no_torch() -> None:
    code = (
        "import sys, tokenworks.plan.latency, tokenworks.plan.hardware, tokenworks.plan.profiles, tokenworks.plan.cli; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_a_larger_model_profiles_its_costliest_points_only_within_the_budget() -> None:
    from tokenworks.plan.profile import Grid, _affordable, _Estimate, _Limits, _plan

    grid = Grid.for_run(quick=False)
    points = list(_plan(grid, _Limits(block_size=128, budget=2048, max_model_len=2048)))
    assert len(points) == 36 and "prefill 2048 after 0" not in {p.name for p in points}  # a prompt < the context
    nano = _Estimate(preset_config("nano", 256), 200e9, grid.repeats)
    assert _affordable(points, nano, grid.budget_seconds) == points
    small = _Estimate(preset_config("small", 8192), 200e9, grid.repeats)
    kept = _affordable(points, small, grid.budget_seconds)
    dropped = [point for point in points if point not in kept]
    assert dropped and {"prefill 8 after 0", "prefill 32 after 0"} <= {p.name for p in kept}
    assert max(small.point(p, fills=False) for p in kept) <= max(small.point(p, fills=True) for p in dropped)
