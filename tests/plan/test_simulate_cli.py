"""`tokenworks plan simulate` as a user runs it, and the loads it shares with `tokenworks bench`."""

from __future__ import annotations

import itertools
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from tests.plan.conftest import LinearLatency, write_profile
from tokenworks.bench.loadgen import LoadOptions, arrival_times
from tokenworks.bench.metrics import summarize
from tokenworks.bench.records import RequestRecord
from tokenworks.bench.workloads import WorkloadOptions
from tokenworks.cli import main
from tokenworks.model import CausalLM, preset_config, save_model
from tokenworks.model.config import ModelConfig
from tokenworks.plan.calibrate import Serving, write_serving
from tokenworks.plan.simulate import Fleet, replica_config, simulate_levels, simulate_replay


def tokenworks(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tokenworks", *args], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def profile(nano_model_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("plan-profile") / "profile.json"
    write_profile(nano_model_dir, path)
    return path


def test_simulate_writes_the_bench_results_labelled_simulated(nano_model_dir, profile, tmp_path) -> None:
    out = tmp_path / "results"
    result = tokenworks(
        "plan", "simulate", str(nano_model_dir), "--profile", str(profile), "--workload", "shared-prefix",
        "--num-prefixes", "2", "--questions-per-prefix", "4", "--prefix-tokens", "64", "--input-tokens", "16",
        "--output-tokens", "4", "--concurrency", "1,4", "--num-requests", "8", "--replicas", "2",
        "--router-policy", "kv", "--arrival-delay-ms", "1.5", "--out", str(out),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "simulated" in result.stdout
    run = json.loads((out / "run.json").read_text())
    assert run["simulated"] is True and run["tool"].startswith("tokenworks plan simulate")
    assert run["simulation"]["replicas"] == 2 and run["simulation"]["router_policy"] == "kv"
    assert (run["simulation"]["arrival_delay_s"], run["simulation"]["delivery_delay_s"]) == (0.0015, 0.0)
    assert [point["label"] for point in run["points"]] == ["in=16,out=4 c=1", "in=16,out=4 c=4"]
    assert "<title>tokenworks plan (simulated): " in (out / "report.html").read_text()
    lines = [json.loads(line) for line in (out / "requests.jsonl").read_text().splitlines()]
    assert len(lines) == 2 * (8 + 2)  # two points of 8 measured requests and the 2 warmup ones
    # The bench's own metrics, recomputed from the records written, are the figures reported.
    for point in run["points"]:
        records = [RequestRecord.from_json({k: v for k, v in line.items() if k != "point"})
                   for line in lines if line["point"] == point["label"]]  # fmt: skip
        assert summarize(records).output_throughput == point["output_throughput"]
        assert all(record.output_tokens == 4 and len(record.chunk_times) == 4 for record in records)
    # The second question on a prefix finds it cached (the kv router sends it where the first went).
    assert sum(line["cached_tokens"] for line in lines) > 0
    assert all(p["prefix_hit_rate"] > 0 for p in run["simulation"]["points"])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("missing", "no profile at"),
        ("policy", "unknown routing policy 'fastest'"),
        ("other-model", "measured another model"),
    ],
)
def test_bad_input_is_one_clear_line(nano_model_dir, profile, tmp_path, change, message, monkeypatch, capsys) -> None:
    """Through the command's own entry point (in this process: a subprocess each took seconds)."""
    args = ["plan", "simulate", str(nano_model_dir), "--profile", str(profile), "--out", str(tmp_path / "out")]
    if change == "missing":
        args[4] = str(tmp_path / "absent.json")
    elif change == "policy":
        args += ["--replicas", "2", "--router-policy", "fastest"]
    else:  # a profile measured on another model (the micro shape)
        other = tmp_path / "micro"
        config = ModelConfig.load(nano_model_dir)
        save_model(CausalLM(preset_config("micro", config.vocab_size)).init_weights(), other)
        write_profile(other, tmp_path / "micro.json")
        args[4] = str(tmp_path / "micro.json")
    monkeypatch.setattr(sys, "argv", ["tokenworks", *args])
    with pytest.raises(SystemExit) as exited:
        main()
    stderr = capsys.readouterr().err
    assert exited.value.code == 1
    assert stderr.startswith("error: ") and message in stderr and "Traceback" not in stderr
    assert not (tmp_path / "out").exists()


def fleet(**changes) -> Fleet:
    config = ModelConfig(vocab_size=700, hidden_size=96, intermediate_size=288, num_hidden_layers=2,
                         num_attention_heads=3, num_key_value_heads=1)  # fmt: skip
    return Fleet(replica_config(config, block_size=16, num_kv_blocks=512), LinearLatency(0.002, 1e-4), **changes)


def test_open_loop_sends_on_the_benchs_own_schedule(sim_prompts) -> None:
    """Gamma arrivals at rate 20 with shape 0.5: every send at the time `tokenworks bench` would
    send it with the same seed (no cap, so nothing waits)."""
    load = LoadOptions(request_rate=20.0, arrival="gamma", burstiness=0.5, num_requests=30, seed=4)
    workload = WorkloadOptions(api="completions", input_tokens="12", output_tokens="3")
    (run,) = simulate_levels(fleet(), sim_prompts, workload, load, [(None, 20.0)])
    expected = arrival_times(20.0, 30, "gamma", 0.5, random.Random(4))
    assert [record.intended_send for record in run.records] == expected
    assert [record.sent for record in run.records] == expected


def test_a_capped_open_loop_waits_for_a_slot(sim_prompts) -> None:
    """Rate 1000/s capped at 1 in flight: each request waits for the one before it to finish."""
    load = LoadOptions(request_rate=1000.0, num_requests=5, seed=0)
    workload = WorkloadOptions(api="completions", input_tokens="12", output_tokens="3")
    (run,) = simulate_levels(fleet(), sim_prompts, workload, load, [(1, 1000.0)])
    sends = [record.sent for record in run.records]
    assert sends[1:] == [record.last_token for record in run.records[:-1]]
    assert all(record.sent >= record.intended_send for record in run.records)


def test_replay_sends_a_recorded_run_again(sim_prompts, tmp_path) -> None:
    load = LoadOptions(request_rate=30.0, num_requests=12, warmup_requests=2, seed=2)
    workload = WorkloadOptions(api="completions", input_tokens="10:40", output_tokens="2:6")
    (recorded,) = simulate_levels(fleet(), sim_prompts, workload, load, [(None, 30.0)])
    log = tmp_path / "requests.jsonl"
    log.write_text("".join(json.dumps({"point": "p"} | r.to_json()) + "\n" for r in recorded.records))
    replayed = simulate_replay(fleet(), sim_prompts, log, None, load)
    due = sorted(r.intended_send if r.intended_send is not None else r.sent for r in recorded.records)
    assert [r.sent for r in replayed.records] == due
    pairs = sorted((r.input_tokens, r.output_tokens) for r in recorded.records)
    assert sorted((r.input_tokens, r.output_tokens) for r in replayed.records) == pairs
    assert [r.warmup for r in replayed.records].count(True) == 2


def test_multi_turn_sessions_stay_together_and_find_their_conversation_cached(sim_prompts) -> None:
    """Three conversations of three turns behind the session policy: each turn after the first
    goes where its conversation went, and finds there the blocks of the turn before, its reply
    included (the reply's text, encoded again in the next prompt, gives back the same ids)."""
    workload = WorkloadOptions(kind="multi-turn", sessions=3, turns=3, input_tokens="20", output_tokens="12")
    load = LoadOptions(concurrency=3, num_requests=9)
    (run,) = simulate_levels(fleet(replicas=2, router_policy="session"), sim_prompts, workload, load, [(3, None)])
    measured = [record for record in run.records if not record.warmup]
    assert [(record.turn, record.input_tokens, record.cached_tokens) for record in measured] == [
        (0, 33, 0), (0, 33, 0), (0, 33, 0), (1, 80, 32), (1, 80, 32), (1, 80, 32), (2, 127, 80), (2, 127, 80),
        (2, 127, 80),
    ]  # fmt: skip
    assert run.stats.route_reasons == {"new-session": 3, "session": 6}


def test_a_request_longer_than_the_context_fails_as_the_server_refuses_it(sim_prompts) -> None:
    config = ModelConfig(vocab_size=700, hidden_size=96, intermediate_size=288, num_hidden_layers=2,
                         num_attention_heads=3, num_key_value_heads=1, max_position_embeddings=64)  # fmt: skip
    short = Fleet(replica_config(config, block_size=16, num_kv_blocks=64), LinearLatency(0.002, 1e-4))
    workload = WorkloadOptions(api="completions", input_tokens="60", output_tokens="8")
    (run,) = simulate_levels(short, sim_prompts, workload, LoadOptions(concurrency=2, num_requests=3), [(2, None)])
    assert [(r.status, r.http_status) for r in run.records] == [("error", 400)] * 3
    assert run.records[0].error == (
        "the prompt (60 tokens) plus max_tokens (8) is 68 tokens, more than this model's context of 64 tokens"
    )
    assert summarize(run.records).errors == 3


def test_a_sweep_gives_each_point_what_it_would_get_alone(sim_prompts) -> None:
    """The points of a sweep share the prompts built once; each runs on a fresh fleet."""
    workload = WorkloadOptions(kind="shared-prefix", num_prefixes=2, questions_per_prefix=3, prefix_tokens=40,
                               input_tokens="8:24", output_tokens="2:5")  # fmt: skip
    load = LoadOptions(num_requests=10, warmup_requests=2)
    together = simulate_levels(fleet(replicas=2), sim_prompts, workload, load, [(1, None), (4, None)])
    (alone,) = simulate_levels(fleet(replicas=2), sim_prompts, workload, load, [(4, None)])
    assert [r.to_json() for r in together[1].records] == [r.to_json() for r in alone.records]
    assert together[0].records[0].input_tokens == together[1].records[0].input_tokens


def _served(args: list[str], monkeypatch, capsys) -> tuple[str, dict, list[dict]]:
    """`tokenworks plan simulate ARGS` in this process: (its output in one line, run.json, the records)."""
    out = args[args.index("--out") + 1]
    monkeypatch.setattr(sys, "argv", ["tokenworks", "plan", "simulate", *args])
    try:
        main()
    except SystemExit as exited:
        assert exited.code in (0, None), capsys.readouterr().err
    output = " ".join(capsys.readouterr().out.split())  # (rich wraps its lines at the console's width)
    lines = (Path(out) / "requests.jsonl").read_text().splitlines()
    return output, json.loads((Path(out) / "run.json").read_text()), [json.loads(line) for line in lines]


def test_a_calibrated_profile_adds_the_serving_time_it_measured(nano_model_dir, tmp_path, monkeypatch, capsys) -> None:
    """A profile with a calibration (as `plan validate` writes it; by hand here: every way in 4 ms,
    0.5 ms of serving loop a step) is simulated with it: each request's TTFT is the engine-only
    one plus its way in and the first step's overhead, and each token's gap 0.5 ms longer.
    `--arrival-delay-ms` replaces the drawn way-ins; `--engine-only` leaves the calibration out."""
    profile = tmp_path / "profile.json"
    write_profile(nano_model_dir, profile)
    write_serving(profile, Serving(step_overhead=0.0005, source="measured-sweep", points=("c=1",),
                                   way_in=(0.004,) * 5, client_gaps=(0.0,)))  # fmt: skip
    common = [str(nano_model_dir), "--profile", str(profile), "--input-tokens", "24", "--output-tokens", "6",
              "--concurrency", "1", "--num-requests", "6"]  # fmt: skip
    runs = {}
    for name, extra in (("calibrated", []), ("engine", ["--engine-only"]), ("given", ["--arrival-delay-ms", "1.5"])):
        runs[name] = _served([*common, *extra, "--out", str(tmp_path / name)], monkeypatch, capsys)
    output, run, calibrated = runs["calibrated"]
    assert "the profile's calibration (measured-sweep)" in output
    assert run["simulation"]["way_in_s"] == [0.004] * 5 and run["simulation"]["step_overhead_s"] == 0.0005
    assert run["simulation"]["calibration"] == {"source": "measured-sweep", "points": ["c=1"], "created": ""}
    _, engine_run, engine = runs["engine"]
    assert engine_run["simulation"]["calibration"] is None and engine_run["simulation"]["way_in_s"] == []
    _, given_run, given = runs["given"]
    assert given_run["simulation"]["arrival_delay_s"] == 0.0015 and given_run["simulation"]["way_in_s"] == []

    def ttft(record: dict) -> float:
        return record["first_token"] - record["sent"]

    def gaps(record: dict) -> list[float]:
        times = record["chunk_times"]
        return [later - earlier for earlier, later in itertools.pairwise(times)]

    assert len(calibrated) == len(engine) == len(given) == 8  # 6 measured and 2 warmup
    for with_it, alone, by_hand in zip(calibrated, engine, given, strict=True):
        assert ttft(with_it) - ttft(alone) == pytest.approx(0.004 + 0.0005, abs=1e-9)
        assert ttft(by_hand) - ttft(alone) == pytest.approx(0.0015 + 0.0005, abs=1e-9)
        assert [a - b for a, b in zip(gaps(with_it), gaps(alone), strict=True)] == pytest.approx([0.0005] * 5)


def test_the_fast_mode_says_it_leaves_the_calibration_out(nano_model_dir, tmp_path, monkeypatch, capsys) -> None:
    profile = tmp_path / "profile.json"
    write_profile(nano_model_dir, profile)
    write_serving(profile, Serving(step_overhead=0.0005, source="measured-sweep"))
    args = [str(nano_model_dir), "--profile", str(profile), "--mode", "fast", "--concurrency", "2",
            "--num-requests", "8", "--out", str(tmp_path / "fast")]  # fmt: skip
    output, run, _ = _served(args, monkeypatch, capsys)
    assert "--mode fast simulates the engine's steps alone: the profile's calibration is left out" in output
    assert run["simulation"]["calibration"] is None and run["simulation"]["step_overhead_s"] == 0.0
    monkeypatch.setattr(sys, "argv", ["tokenworks", "plan", "simulate", *args, "--arrival-delay-ms", "2"])
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 1
    assert "--arrival-delay-ms and --delivery-delay-ms need --mode exact" in capsys.readouterr().err
