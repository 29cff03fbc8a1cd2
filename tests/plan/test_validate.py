"""`tokenworks plan validate` on a live server: the errors are exact arithmetic on the two result files."""

from __future__ import annotations

import json
import shutil
import statistics
import sys
from pathlib import Path

import pytest

from tests.plan.conftest import write_profile
from tests.serve.conftest import ServeProcess
from tokenworks.cli import main
from tokenworks.model import CausalLM, preset_config, save_model
from tokenworks.model.config import ModelConfig
from tokenworks.plan.calibrate import overheads
from tokenworks.plan.validation import METRICS, SweepPoint, median_repeat

KEYS = [metric.key for metric in METRICS]


def run_cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """The command's own entry point, in this process (a subprocess each took seconds)."""
    monkeypatch.setattr(sys, "argv", ["tokenworks", "plan", "validate", *args])
    code = 0
    try:
        main()
    except SystemExit as exited:
        code = exited.code or 0
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def fast_profile(model_dir, path) -> None:
    """write_profile's stand-in with every step 20x faster than it says (about 50 us plus 1 us a
    token): a live step of the nano model takes longer, so calibration has a gap to measure."""
    write_profile(model_dir, path)
    data = json.loads(path.read_text())
    for sample in data["samples"]:
        sample["seconds"] /= 20
    path.write_text(json.dumps(data))


def hit_rate(lines: list[dict], label: str) -> float | None:
    answered = [r for r in lines if r["point"] == label and not r["warmup"] and r["status"] == "ok"]
    if all(r["cached_tokens"] is None for r in answered):
        return None
    return sum(r["cached_tokens"] or 0 for r in answered) / sum(r["input_tokens"] for r in answered)


def figures(directory) -> dict[str, dict[str, float | None]]:
    """Each point's compared figures, read straight from a results directory."""
    run = json.loads((directory / "run.json").read_text())
    lines = [json.loads(line) for line in (directory / "requests.jsonl").read_text().splitlines()]
    return {row["label"]: {key: row.get(key) for key in KEYS[:-1]} | {KEYS[-1]: hit_rate(lines, row["label"])}
            for row in run["points"]}  # fmt: skip


@pytest.fixture(scope="module")
def validated(nano_model_dir, tmp_path_factory):
    """A 2-point sweep of a live server (shared-prefix chat, concurrency 1 and 3), measured by
    `plan validate --url`, which then calibrates on c=1 and simulates it."""
    work = tmp_path_factory.mktemp("validate")
    profile = work / "profile.json"
    fast_profile(nano_model_dir, profile)
    # Its own process, as served (a server thread in this process would share the client's GIL),
    # with the profile's block size, so a 40-token prefix fills blocks that can be shared.
    server = ServeProcess(nano_model_dir, "--block-size", "16", "--max-model-len", "256").wait_healthy()
    try:
        patch = pytest.MonkeyPatch()
        args = [
            "plan", "validate", str(nano_model_dir), "--profile", str(profile), "--url", server.url,
            "--workload", "shared-prefix", "--num-prefixes", "2", "--questions-per-prefix", "3", "--prefix-tokens",
            "40", "--input-tokens", "8", "--output-tokens", "6", "--concurrency", "1,3", "--requests-per-point", "6",
            "--kv-cache-memory-gib", "0.05", "--out", str(work / "out"),
        ]  # fmt: skip
        patch.setattr(sys, "argv", ["tokenworks", *args])
        with pytest.raises(SystemExit) as exited:
            main()
        patch.undo()
        assert exited.value.code == 0
    finally:
        server.stop()
    return work, profile


def median_figures(directories: list[Path]) -> dict[str, dict[str, float | None]]:
    """Each point's figures the median of the directories' (of those that have the figure)."""
    each = [figures(directory) for directory in directories]
    medians = {}
    for label in each[0]:
        values = {key: [f[label][key] for f in each if f[label][key] is not None] for key in KEYS}
        medians[label] = {key: statistics.median(v) if v else None for key, v in values.items()}
    return medians


def test_the_table_and_json_hold_every_metric_and_point_computed_exactly(validated) -> None:
    """The simulated side: the median of three simulations (the calibration's way-ins, client
    gaps and host speeds drawn with another seed in each)."""
    work, _ = validated
    out = work / "out"
    report = json.loads((out / "validation.json").read_text())
    assert report["simulations"] == [str(out / name) for name in ("simulated", "simulated-2", "simulated-3")]
    runs = [json.loads((Path(d) / "run.json").read_text())["simulation"] for d in report["simulations"]]
    assert [run["seed"] for run in runs] == [0, 1, 2]
    measured, simulated = figures(out / "measured"), median_figures([Path(d) for d in report["simulations"]])
    assert list(measured) == list(simulated) == ["in=8,out=6 c=1", "in=8,out=6 c=3"]
    assert [point["label"] for point in report["points"]] == list(measured)
    errors = {key: [] for key in KEYS}
    for point in report["points"]:
        label = point["label"]
        assert list(point["cells"]) == KEYS
        for metric in METRICS:
            cell, m, s = point["cells"][metric.key], measured[label][metric.key], simulated[label][metric.key]
            assert (cell["measured"], cell["simulated"]) == (m, s)
            # (A relative error of a measured 0, every token in one chunk so TPOT 0, is none.)
            expected = (s - m) * 100 if metric.points else (s - m) / m if m else None
            assert cell["error"] == expected
            if expected is not None:
                errors[metric.key].append(abs(expected))
    for key in KEYS:
        median = report["metrics"][key]["median_abs_error"]
        assert median == (statistics.median(errors[key]) if errors[key] else None)
    # The shared prefix is found cached live and in the simulation (the third question on a prefix).
    assert measured["in=8,out=6 c=3"]["prefix_hit_rate"] > 0
    assert report["calibration_points"] == ["in=8,out=6 c=1", "in=8,out=6 c=3"]
    assert (work / "out" / "validation.png").stat().st_size > 0


def test_calibration_is_written_into_the_profile(validated) -> None:
    """The overheads are calibrate.py's arithmetic on the gaps it records. The way-ins are one a
    measured request of c=1 (its 6), the client gaps one between two of its sends (2 warmup + 6
    requests: 7), the host's speed one a request of c=1 that streamed more than one chunk."""
    work, profile = validated
    serving = json.loads(profile.read_text())["serving"]
    report = json.loads((work / "out" / "validation.json").read_text())
    assert serving["points"] == ["in=8,out=6 c=1", "in=8,out=6 c=3"]
    assert serving["batches"][0] == 1.0
    assert 1 <= serving["batches"][1] <= 3  # (1: the measured way-ins spread c=3's requests over steps)
    gaps = list(zip(serving["batches"], serving["tpot_gaps"], strict=True))
    assert (serving["step_overhead"], serving["token_overhead"]) == overheads(gaps)
    assert serving["arrival_delay"] == max(0.0, serving["ttft_gap"])
    assert len(serving["way_in"]) == 6 and min(serving["way_in"]) >= 0
    assert len(serving["client_gaps"]) == 7 and min(serving["client_gaps"]) >= 0
    assert serving["way_in_cpu"] == 0.0  # not given: measured apart or not at all
    for key in ("arrival_delay", "step_overhead", "token_overhead", "way_in_cpu"):
        assert report["simulation"][f"{key}_s"] == serving[key]
    assert report["simulation"]["way_in_s"] == serving["way_in"]
    # The host's speed: each c=1 request's TPOT over their mean, for as long as one decodes.
    lines = [json.loads(line) for line in (work / "out" / "measured" / "requests.jsonl").read_text().splitlines()]
    one = sorted((r for r in lines if r["point"] == "in=8,out=6 c=1" and not r["warmup"]), key=lambda r: r["sent"])
    decodes = [r["last_token"] - r["first_token"] for r in one if r["last_token"] > r["first_token"]]
    tpots = [decode / 5 for decode in decodes]
    assert serving["host_speed"] == [tpot / (sum(tpots) / len(tpots)) for tpot in tpots]  # ([]: all in one chunk)
    assert serving["speed_window"] == statistics.median(decodes)
    assert report["simulation"]["host_speed"] == serving["host_speed"]
    assert report["simulation"]["speed_window_s"] == serving["speed_window"]


def test_no_host_speed_simulates_at_one_speed(validated, nano_model_dir, monkeypatch, capsys, tmp_path) -> None:
    """--no-host-speed: no speed in the simulation, so at c=1 (one request, its steps alone) the
    three simulations, whose way-ins and client gaps are drawn differently, stream alike."""
    work, profile = validated
    code, _, err = run_cli(monkeypatch, capsys, str(nano_model_dir), "--profile", str(profile), "--measured",
                           str(work / "out" / "measured"), "--kv-cache-memory-gib", "0.05", "--no-host-speed",
                           "--out", str(tmp_path / "out"))  # fmt: skip
    assert code == 0, err
    report = json.loads((tmp_path / "out" / "validation.json").read_text())
    assert report["simulation"]["host_speed"] == [] and report["simulation"]["speed_window_s"] == 0.0
    assert len(report["simulations"]) == 3  # (the way-ins and client gaps are still drawn)
    c1 = "in=8,out=6 c=1"
    tpots = [figures(Path(directory))[c1]["tpot_p50_s"] for directory in report["simulations"]]
    # (alike to the last bits: the clock's times differ, so their differences round differently)
    assert tpots[0] > 0 and tpots == pytest.approx([tpots[0]] * 3, rel=1e-12)
    assert report["points"][0]["cells"]["tpot_p50_s"]["simulated"] == statistics.median(tpots)


def test_measured_dir_gives_the_same_errors(validated, nano_model_dir, monkeypatch, capsys) -> None:
    """--measured reads what --url wrote; the profile's calibration (now in it) is used as is."""
    work, profile = validated
    first = json.loads((work / "out" / "validation.json").read_text())
    code, out, err = run_cli(monkeypatch, capsys, str(nano_model_dir), "--profile", str(profile), "--measured",
                             str(work / "out" / "measured"), "--kv-cache-memory-gib", "0.05", "--out",
                             str(work / "again"))  # fmt: skip
    assert code == 0, err
    again = json.loads((work / "again" / "validation.json").read_text())
    assert again["points"] == first["points"]
    for metric in METRICS:  # a row a point and metric, with the figures as validation.json has them
        for point in again["points"]:
            cell = point["cells"][metric.key]
            assert (
                f"{cell['measured'] * metric.scale:,.2f}" in out and f"{cell['simulated'] * metric.scale:,.2f}" in out
            )
        assert out.count(metric.name) == len(again["points"]) + 1  # and its median |error|
    assert "median |error|" in out
    assert "the profile's calibration" in out


def test_the_serving_cpu_measured_apart_goes_into_the_calibration(validated, nano_model_dir, monkeypatch, capsys,
                                                                  tmp_path) -> None:  # fmt: skip
    """The --*-cpu-ms figures are taken as given (measured, not fitted), written into the profile's
    calibration with --recalibrate and into the report's simulation."""
    work, profile = validated
    copy = tmp_path / "profile.json"
    copy.write_text(profile.read_text())
    code, _, err = run_cli(monkeypatch, capsys, str(nano_model_dir), "--profile", str(copy), "--measured",
                           str(work / "out" / "measured"), "--kv-cache-memory-gib", "0.05", "--recalibrate",
                           "--way-in-cpu-ms", "1.5", "--request-cpu-ms", "0.75", "--router-cpu-ms", "0.5",
                           "--stream-cpu-ms", "0.25", "--out", str(tmp_path / "out"))  # fmt: skip
    assert code == 0, err
    serving = json.loads(copy.read_text())["serving"]
    keys, given = ("way_in_cpu", "request_cpu", "router_cpu", "stream_cpu"), (0.0015, 0.00075, 0.0005, 0.00025)
    assert tuple(serving[key] for key in keys) == given
    simulation = json.loads((tmp_path / "out" / "validation.json").read_text())["simulation"]
    assert tuple(simulation[f"{key}_s"] for key in keys) == given
    code, _, err = run_cli(monkeypatch, capsys, str(nano_model_dir), "--profile", str(copy), "--measured",
                           str(work / "out" / "measured"), "--stream-cpu-ms", "-1", "--out", str(tmp_path / "bad"))  # fmt: skip
    assert code != 0 and "cannot be negative" in err


def repeat_of(measured, directory, scales: dict[str, float], **load) -> None:
    """A copy of a measured sweep whose point rows' figures are scaled (label -> factor): a repeat
    measured faster or slower, the same requests; `load` changes its settings."""
    shutil.copytree(measured, directory)
    run = json.loads((directory / "run.json").read_text())
    for row in run["points"]:
        for key in KEYS[:-1]:
            row[key] = row[key] * scales[row["label"]] if row[key] is not None else None
    run["load"] |= load
    (directory / "run.json").write_text(json.dumps(run))


def test_repeats_are_compared_by_their_median_and_calibrated_on_the_median_one(validated, nano_model_dir,
                                                                             monkeypatch, capsys, tmp_path) -> None:  # fmt: skip
    """--measured once a repeat: each measured figure the median of the three at its point (the
    first repeat's at c=1, the third's at c=3 here), the prefix hit rates (the same requests
    answered alike) as they were, and the calibration's way-ins and client gaps one repeat's, the
    one with the median TTFT p50 at c=1 (its 6 requests, 7 gaps)."""
    work, profile = validated
    first = work / "out" / "measured"
    c1, c3 = "in=8,out=6 c=1", "in=8,out=6 c=3"
    repeat_of(first, tmp_path / "r2", {c1: 1.5, c3: 0.7})
    repeat_of(first, tmp_path / "r3", {c1: 0.8, c3: 0.9})
    copy = tmp_path / "profile.json"
    copy.write_text(profile.read_text())
    repeats = [first, tmp_path / "r2", tmp_path / "r3"]
    code, out, err = run_cli(monkeypatch, capsys, str(nano_model_dir), "--profile", str(copy), "--measured",
                             str(repeats[0]), "--measured", str(repeats[1]), "--measured", str(repeats[2]),
                             "--kv-cache-memory-gib", "0.05", "--recalibrate", "--out", str(tmp_path / "out"))  # fmt: skip
    assert code == 0, err
    assert "the median of 3 repeats" in out
    report = json.loads((tmp_path / "out" / "validation.json").read_text())
    assert report["repeats"] == [str(directory) for directory in repeats]
    each = [figures(directory) for directory in repeats]
    for point in report["points"]:
        for key in KEYS:
            values = [repeat[point["label"]][key] for repeat in each]
            expected = statistics.median(values) if None not in values else values[0]
            assert point["cells"][key]["measured"] == expected
    assert report["points"][0]["cells"]["ttft_p50_s"]["measured"] == each[0][c1]["ttft_p50_s"]
    assert report["points"][1]["cells"]["ttft_p50_s"]["measured"] == each[2][c3]["ttft_p50_s"]
    serving = json.loads(copy.read_text())["serving"]
    assert serving["source"] == str(first)
    assert len(serving["way_in"]) == 6 and len(serving["client_gaps"]) == 7
    assert report["calibration_points"] == [c1, c3]


@pytest.mark.parametrize(
    ("ttfts", "expected"),
    [
        ([], 0),  # measured once
        ([0.30, 0.20, 0.25], 2),
        ([0.20, 0.25, 0.30], 1),
        ([0.40, 0.10, 0.30, 0.20], 3),  # even: the lower of the middle two (0.20)
        ([None, 0.30, 0.10], 1),  # a repeat without the figure ranks last
    ],
)
def test_the_median_repeat_is_the_one_whose_figure_is_the_median(ttfts, expected) -> None:
    point = SweepPoint("c=1", 1, None, "8", "6", 6, {}, tuple({"ttft_p50_s": t} for t in ttfts))
    assert median_repeat(point, "ttft_p50_s") == expected


def test_a_repeat_of_another_sweep_is_one_clear_line(validated, nano_model_dir, monkeypatch, capsys,
                                                      tmp_path) -> None:  # fmt: skip
    work, profile = validated
    first = work / "out" / "measured"
    repeat_of(first, tmp_path / "other-seed", {"in=8,out=6 c=1": 1.0, "in=8,out=6 c=3": 1.0}, seed=7)
    code, _, err = run_cli(monkeypatch, capsys, str(nano_model_dir), "--profile", str(profile), "--measured",
                           str(first), "--measured", str(tmp_path / "other-seed"), "--out", str(tmp_path / "o"))  # fmt: skip
    assert code == 1
    assert f"{tmp_path / 'other-seed'} is not a repeat of {first}: its load (arrivals, warmup, seed) differ" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("no-run", "has no run.json"),
        ("no-settings", "does not record the sweep's settings (workload, load missing)"),
        ("other-model", "measured another model"),
        ("neither", "give one of --measured DIR"),
        ("simulated", "holds simulated results"),
        ("no-simulations", "--simulations must be at least 1, got 0"),
    ],
)
def test_bad_input_is_one_clear_line(validated, nano_model_dir, tmp_path, monkeypatch, capsys, case, message) -> None:
    work, profile = validated
    measured = tmp_path / "measured"
    measured.mkdir()
    args = [str(nano_model_dir), "--profile", str(profile), "--measured", str(measured), "--out", str(tmp_path / "o")]
    if case == "no-settings":
        (measured / "run.json").write_text(json.dumps({"tool": "tokenworks bench", "points": [{"label": "x"}]}))
    elif case == "other-model":
        other = tmp_path / "micro"
        config = ModelConfig.load(nano_model_dir)
        save_model(CausalLM(preset_config("micro", config.vocab_size)).init_weights(), other)
        write_profile(other, tmp_path / "micro.json")
        args[2] = str(tmp_path / "micro.json")
    elif case == "neither":
        args = args[:3] + args[5:]
    elif case == "simulated":
        args[4] = str(work / "out" / "simulated")
    elif case == "no-simulations":
        args += ["--simulations", "0"]
    code, _, err = run_cli(monkeypatch, capsys, *args)
    assert code == 1
    assert err.startswith("error: ") and message in err.replace("\n", " ") and "Traceback" not in err


def test_validate_imports_no_torch() -> None:
    """Everything `plan validate` loads, its command's function-level imports included."""
    import subprocess

    modules = "validate_cli, validate, validation, validation_plot, calibrate, latency, prompts, results, simulate"
    code = f"import sys; from tokenworks.plan import {modules}; assert 'torch' not in sys.modules, 'torch imported'"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("gaps", "expected"),
    [
        ([(1.0, 0.002), (5.0, 0.010)], (0.0, 0.002)),  # token (0.010 - 0.002) / 4 = 0.002, step 0.002 - 0.002 = 0
        ([(1.0, 0.003), (5.0, 0.011)], (0.001, 0.002)),
        ([(1.0, 0.004), (5.0, 0.001)], (0.0025, 0.0)),  # the gap shrinks with the batch: the median gap a step's
        # the profile slower at c=1: the line through the origin over the batched point, 0.0168 / 32
        ([(1.0, -0.003), (32.0, 0.0168)], (0.0, 0.0168 / 32)),
        ([(1.0, -0.001), (8.0, -0.002)], (0.0, 0.0)),
        ([(1.0, 0.0025)], (0.0025, 0.0)),  # one level: a step's
        # gap = 0.001 + 0.002 k, but the last point measured in a busy minute (0.090, not 0.033): 6 of
        # the 10 slopes are 0.002, so their median is, and the median of gap - 0.002 k is 0.001
        ([(1.0, 0.003), (2.0, 0.005), (4.0, 0.009), (8.0, 0.017), (16.0, 0.090)], (0.001, 0.002)),
        # the same points lowered to step -0.001: through the origin, the median of 0.0015, 0.00175,
        # 0.001875 and 0.005625 (gap / k where k > 1)
        ([(1.0, 0.001), (2.0, 0.003), (4.0, 0.007), (8.0, 0.015), (16.0, 0.090)], (0.0, (0.00175 + 0.001875) / 2)),
    ],
)
def test_overheads_fit_a_line_through_the_tpot_gaps_by_hand(gaps, expected) -> None:
    step, token = overheads(gaps)
    assert step == pytest.approx(expected[0], abs=1e-15) and token == pytest.approx(expected[1], abs=1e-15)
