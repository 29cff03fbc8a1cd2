"""`tokenworks bench` against a live `tokenworks serve` (its own process) on a tiny random model."""

from __future__ import annotations

import csv
import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tokenworks.data import python_docs
from tokenworks.factory.server import ServerProcess
from tokenworks.model import CausalLM, Tokenizer, preset_config, save_model

NAME = "bench-nano"
RESULT_FILES = {
    "run.json", "requests.jsonl", "points.csv", "frontier.csv", "report.html",
    "throughput.png", "cost.png", "energy.png", "latency.png",
}  # fmt: skip


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    texts = [d.text for d in itertools.islice(python_docs(include_modules=False), 40)]
    tokenizer = Tokenizer.train(texts, vocab_size=512)
    directory = tmp_path_factory.mktemp("bench-nano")
    config = preset_config("nano", tokenizer.vocab_size, eos_token_id=tokenizer.eos_token_id)
    save_model(CausalLM(config).init_weights(seed=0, std=0.1), directory)
    tokenizer.save(directory)
    return directory


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    args = ["--threads", "1", "--max-model-len", "256", "--kv-cache-memory-gib", "0.05"]
    log = tmp_path_factory.mktemp("bench-server") / "server.log"
    with ServerProcess(model_dir, NAME, log, 0, args) as process:
        yield process


def bench(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "tokenworks", "bench", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8") as file:
        return list(csv.DictReader(file))


def test_sweep_writes_every_report_file_with_exact_counts(server, model_dir, tmp_path) -> None:
    out = tmp_path / "sweep"
    result = bench(
        "sweep", "--url", server.url, "--tokenizer", str(model_dir), "--api", "completions",
        "--concurrency", "1,2", "--requests-per-point", "4", "--input-tokens", "16", "--output-tokens", "8",
        "--slo", "ttft=30s,tpot=10s", "--no-stop", "--out", str(out),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert {p.name for p in out.iterdir()} == RESULT_FILES

    points = read_rows(out / "points.csv")
    assert [p["concurrency"] for p in points] == ["1", "2"]
    for point in points:
        # 4 measured requests per point (2 x concurrency is at most 4), each exactly 16 in and 8 out.
        assert (point["completed"], point["errors"], point["warmup"]) == ("4", "0", "2")
        assert (point["input_tokens"], point["output_tokens"]) == ("64", "32")
        assert point["slo_attainment"] == "1.0" and point["good_requests"] == "4"
        assert float(point["output_throughput"]) > 0 and float(point["interactivity"]) > 0
        assert point["energy_label"] == "estimated" or point["energy_source"] in ("rapl", "nvml")
    frontier = read_rows(out / "frontier.csv")
    assert list(frontier[0])[:5] == [
        "label",
        "concurrency",
        "request_rate",
        "interactivity",
        "output_throughput_per_device",
    ]
    assert {row["label"] for row in frontier} <= {p["label"] for p in points}

    records = [json.loads(line) for line in (out / "requests.jsonl").read_text().splitlines()]
    assert len(records) == 2 * (4 + 2) and sum(r["warmup"] for r in records) == 4
    measured = [r for r in records if not r["warmup"]]
    assert all(r["status"] == "ok" and r["token_source"] == "usage" for r in measured)
    assert all((r["input_tokens"], r["output_tokens"], sum(r["chunk_tokens"])) == (16, 8, 8) for r in measured)

    run = json.loads((out / "run.json").read_text())
    assert run["endpoint"]["model"] == NAME and run["endpoint"]["max_model_len"] == 256
    assert run["slo"] == "ttft=30s,tpot=10s" and run["accounting"]["hardware"] == "CPU host"
    assert run["accounting"]["price_book"]["name"] and run["load_generator_host"]["cores"] >= 1
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 4 and "estimated" in page

    compared = bench("compare", str(out), str(out), "--name", "first", "--name", "second", "--out", str(tmp_path / "c"))
    assert compared.returncode == 0, compared.stderr[-3000:]
    assert {"compare.html", "throughput.png", "cost.png", "energy.png"} <= {p.name for p in (tmp_path / "c").iterdir()}


def test_open_loop_run_keeps_its_schedule_and_shared_prefixes_hit_the_cache(server, model_dir, tmp_path) -> None:
    out = tmp_path / "run"
    result = bench(
        "run", "--url", server.url, "--tokenizer", str(model_dir), "--workload", "shared-prefix",
        "--num-prefixes", "2", "--questions-per-prefix", "3", "--prefix-tokens", "160", "--input-tokens", "8",
        "--output-tokens", "4", "--request-rate", "20", "--num-requests", "6", "--warmup-requests", "0",
        "--out", str(out),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in (out / "requests.jsonl").read_text().splitlines()]
    assert len(records) == 6 and all(r["status"] == "ok" and r["output_tokens"] == 4 for r in records)
    intended = [r["intended_send"] for r in records]
    assert intended[0] < 0.01 and intended == sorted(intended)  # the schedule starts at once
    assert all(r["sent"] >= r["intended_send"] for r in records)
    metrics = subprocess.run(["curl", "-s", f"{server.url}/metrics"], capture_output=True, text=True).stdout
    cached = [line for line in metrics.splitlines() if line.startswith("tokenworks:prompt_tokens_cached_total")]
    # later questions reuse their prefix's first block (128 tokens, the CPU default)
    assert cached and float(cached[0].split()[-1]) > 0


def test_multi_turn_sessions_complete(server, model_dir, tmp_path) -> None:
    out = tmp_path / "turns"
    result = bench(
        "run", "--url", server.url, "--tokenizer", str(model_dir), "--workload", "multi-turn", "--sessions", "2",
        "--turns", "3", "--input-tokens", "8", "--output-tokens", "4", "--concurrency", "2", "--num-requests", "6",
        "--warmup-requests", "0", "--out", str(out),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in (out / "requests.jsonl").read_text().splitlines()]
    assert sorted((r["session"], r["turn"]) for r in records) == [(s, t) for s in range(2) for t in range(3)]
    by_turn = {(r["session"], r["turn"]): r["input_tokens"] for r in records}
    assert all(by_turn[(s, 2)] > by_turn[(s, 1)] > by_turn[(s, 0)] for s in range(2))  # the history grows


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "--url", "http://127.0.0.1:9"], "cannot reach http://127.0.0.1:9/v1/models"),
        (["run", "--url", "http://127.0.0.1:9", "--slo", "ttfb=1s"], "unknown SLO key 'ttfb'"),
        (["run", "--url", "http://127.0.0.1:9", "--input-tokens", "normal:12"], "bad length 'normal:12'"),
        (["sweep", "--url", "http://127.0.0.1:9", "--lengths", "128"], "--lengths takes IN/OUT"),
        (["sweep", "--url", "http://127.0.0.1:9", "--hardware", "abacus"], "abacus"),
    ],
)
def test_bad_input_is_one_clear_line(args: list[str], message: str) -> None:
    result = bench(*args, timeout=60)
    assert result.returncode == 1
    assert message in result.stderr and "Traceback" not in result.stderr


def test_capacity_search_reports_a_lower_bound_when_every_rate_passes(server, model_dir, tmp_path) -> None:
    out = tmp_path / "capacity"
    result = bench(
        "capacity", "--url", server.url, "--tokenizer", str(model_dir), "--api", "completions",
        "--input-tokens", "8", "--output-tokens", "4", "--slo", "e2e=60s", "--low", "1", "--high", "2",
        "--max-steps", "3", "--requests-per-point", "3", "--warmup-requests", "0", "--out", str(out),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "capacity: 4 requests/s" in " ".join(result.stdout.split()) and "lower bound" in result.stdout
    run = json.loads((out / "run.json").read_text())
    assert run["capacity"]["requests_per_s"] == 4.0 and run["capacity"]["bracketed"] is False
    assert [rate for rate, _ in run["capacity"]["tried"]] == [1.0, 2.0, 4.0]
    assert [p["request_rate"] for p in run["points"]] == [1.0, 2.0, 4.0]
