"""The request log's cost: `tokenworks serve` with logging off and on, under the same load.

    .venv/bin/python benchmarks/flywheel_log.py [--model DIR] [--repeats 3] [--concurrency 32]
        [--requests 256] [--input-tokens 64] [--output-tokens 32] [--threads 1]

Not a test and not run in CI. Each repeat starts a fresh `tokenworks serve MODEL --threads T`
twice, once plain and once with `--log-db` (a new file each time, default flush interval), the
order alternating between repeats so both meet the host in the same minutes; against each it
runs `tokenworks bench run` over HTTP (/v1/completions, streamed, the synthetic workload with
exact token counts, greedy, closed loop at --concurrency, --concurrency warmup requests first),
then stops the server with SIGTERM (the log's last rows commit) and, for the logged run, checks
that the log holds one row per request bench sent. Figures: output tokens/s and TTFT p50 from
bench's run.json, and the CPU seconds the HTTP process and the engine process used during the
load (/proc/PID/stat: what logging costs, much less moved by other work on the host than the
rates are), each the median over the repeats, and on / off; each run's line ends with the host's
1-minute load average. Goal (printed, not asserted): tokens/s and TTFT p50 within 3%. Model: by default the serve tests' model (the `nano` preset with a 512-token
tokenizer trained on 40 of Python's documents, seed 0), built under .peers/flywheel-log/ once.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / ".peers" / "flywheel-log"
CLI = Path(sys.executable).parent / "tokenworks"
GOAL = 0.03
sys.path.insert(0, str(ROOT))

from machine import cpu_model  # noqa: E402


def test_model() -> Path:
    """The serve tests' model (tests/serve/conftest.py's serve_model_dir), built once."""
    directory = WORK / "nano-test"
    if (directory / "config.json").is_file():
        return directory
    from tokenworks.data import python_docs
    from tokenworks.model import CausalLM, Tokenizer, preset_config, save_model

    texts = [d.text for d in itertools.islice(python_docs(include_modules=False), 40)]
    tokenizer = Tokenizer.train(texts, vocab_size=512)
    config = preset_config("nano", tokenizer.vocab_size, eos_token_id=tokenizer.eos_token_id)
    save_model(CausalLM(config).init_weights(seed=0, std=0.1), directory)
    tokenizer.save(directory)
    return directory


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: Path, threads: int, log_db: Path | None, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [str(CLI), "serve", str(model), "--threads", str(threads), "--port", str(port),
               "--served-model-name", "model", "--kv-cache-memory-gib", "0.5"]  # fmt: skip
    if log_db is not None:
        command += ["--log-db", str(log_db)]
    with log.open("w") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited ({process.returncode}); see {log}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return process, url
        except OSError:
            pass
        if time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"the server did not start; see {log}")
        time.sleep(0.2)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (/proc/PID/stat), 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def engine_pid(server_pid: int) -> int:
    children = Path(f"/proc/{server_pid}/task/{server_pid}/children").read_text().split()
    return int(children[0])


def bench(url: str, model: Path, args: argparse.Namespace, out: Path, seed: int) -> dict:
    command = [str(CLI), "bench", "run", "--url", url, "--model", "model", "--api", "completions",
               "--tokenizer", str(model), "--input-tokens", str(args.input_tokens),
               "--output-tokens", str(args.output_tokens), "--temperature", "0",
               "--concurrency", str(args.concurrency), "--num-requests", str(args.requests),
               "--warmup-requests", str(args.concurrency), "--seed", str(seed), "--out", str(out)]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True, text=True, cwd=ROOT)
    point = json.loads((out / "run.json").read_text())["points"][0]
    return {"tok_s": point["output_throughput"], "ttft_p50": point["ttft_p50_s"], "errors": point["errors"],
            "completed": point["completed"]}  # fmt: skip


def measure(logged: bool, repeat: int, model: Path, args: argparse.Namespace) -> dict:
    name = f"{'on' if logged else 'off'}-{repeat}"
    db = WORK / "runs" / f"{name}.db"
    for stale in db.parent.glob(f"{name}.db*"):
        stale.unlink()
    db.parent.mkdir(parents=True, exist_ok=True)
    process, url = start_server(model, args.threads, db if logged else None, WORK / "runs" / f"{name}.log")
    try:
        pids = {"http": process.pid, "engine": engine_pid(process.pid)}
        before = {part: cpu_seconds(pid) for part, pid in pids.items()}
        result = bench(url, model, args, WORK / "runs" / name, seed=repeat)
        for part, pid in pids.items():
            result[f"{part}_cpu"] = cpu_seconds(pid) - before[part]
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(60)
    sent = len((WORK / "runs" / name / "requests.jsonl").read_text().splitlines())  # warmup included
    if logged:
        with sqlite3.connect(db) as connection:
            result["rows"] = connection.execute("SELECT count(*) FROM requests").fetchone()[0]
    print(f"  {name:6} {result['tok_s']:8.1f} tok/s  TTFT p50 {result['ttft_p50'] * 1000:6.1f} ms  "
          f"CPU s: HTTP {result['http_cpu']:5.2f} engine {result['engine_cpu']:5.2f}  errors {result['errors']}  "
          f"requests {sent}" + (f", logged {result['rows']}" if logged else "") +
          f"  load {os.getloadavg()[0]:.1f}", flush=True)  # fmt: skip
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="a checkpoint directory (default: the serve tests' model)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--requests", type=int, default=256)
    parser.add_argument("--input-tokens", type=int, default=64)
    parser.add_argument("--output-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="the engine's threads (default 1 of 2 cores)")
    args = parser.parse_args()
    model = args.model or test_model()
    config = json.loads((model / "config.json").read_text())
    print(f"model {model.relative_to(ROOT) if model.is_relative_to(ROOT) else model}: {config['num_hidden_layers']} "
          f"layers, hidden {config['hidden_size']}, vocab {config['vocab_size']}, {config.get('torch_dtype')}")  # fmt: skip
    print(f"host: {cpu_model()}, {os.cpu_count()} CPUs; engine --threads {args.threads}; workload: "
          f"/v1/completions streamed, {args.input_tokens} in / {args.output_tokens} out tokens, greedy, "
          f"concurrency {args.concurrency}, {args.requests} requests after {args.concurrency} warmup, "
          f"{args.repeats} repeats (order alternating)")  # fmt: skip
    results: dict[bool, list[dict]] = {False: [], True: []}
    for repeat in range(args.repeats):
        for logged in (False, True) if repeat % 2 == 0 else (True, False):
            results[logged].append(measure(logged, repeat, model, args))
    print(f"\n{'median':14}{'off':>9}{'on':>9}{'on/off':>9}")
    figures = (("tok_s", "tok/s", 1), ("ttft_p50", "TTFT p50 ms", 1000), ("http_cpu", "HTTP CPU s", 1),
               ("engine_cpu", "engine CPU s", 1))  # fmt: skip
    for key, label, scale in figures:
        off = statistics.median(r[key] for r in results[False]) * scale
        on = statistics.median(r[key] for r in results[True]) * scale
        goal = ""
        if key in ("tok_s", "ttft_p50"):
            goal = f"  goal within {GOAL:.0%}: {'PASS' if abs(on / off - 1) <= GOAL else 'MISS'}"
        print(f"{label:14}{off:9.2f}{on:9.2f}{on / off:9.3f}{goal}")


if __name__ == "__main__":
    main()
