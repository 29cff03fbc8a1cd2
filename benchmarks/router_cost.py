"""What the router costs: the kv policy's decision time on a large index, and the TTFT it adds.

    .venv/bin/python benchmarks/router_cost.py [--parts decision,ttft] [--workers 64] [--blocks 1000000]
        [--decisions 20000] [--no-alternate] [--shape tiny|small] [--requests 40] [--json PATH]

Not a test and not run in CI. Two parts:

(a) decision, in process (no network): a `tokenworks.router.prefix_index.PrefixIndex` with
--workers workers (64) holding --blocks (1 million) indexed blocks in all, filled through
`index.stored(...)` (what the KV event feed calls) with realistic chained prompts: 1,024-token
prompts at block size 16 (64 blocks each), each a 512-token system prompt (one of 512, drawn
Zipf-like so a few are common) followed by a 512-token tail of its own, each stored on a
random worker, until the index holds --blocks (index.size(), counted per worker). Then
`KvAware.choose` (kv_policy.py) is timed with time.perf_counter_ns around each call, over
--decisions requests (`RoutedRequest` with `tokens` set: 60% a stored system prompt with a
new tail, 20% a prompt stored before, replayed, 20% random tokens), each against the 64
`Worker` objects (workers.py: block size 16, KV events, learnt estimates, random loads 0..8).
Each call is timed by the clock (perf_counter_ns) and by the thread's CPU time
(thread_time_ns), which leaves out the time other processes on a busy host take the core.
With --alternate (the default) as many decisions again, every other one, run the Python loops
(`prefix_index.compiled` off: the walk, pricing and block keys of TOKENWORKS_NATIVE=0) on the
same index, whose tables stay the compiled ones (TOKENWORKS_NATIVE=0 also keeps them in dicts,
slower still): the compiled loops' gain, measured in the same minutes (runs minutes apart on
this host differ by a third).
Each call also records its prediction in the index (as in the router); the timed calls follow
untimed ones for longer than a prediction lasts (SIBLING_TTL_S), so they pay for expiring
earlier predictions too. The garbage collector is set as the router sets it at startup
(tokenworks.gc_tuning); the harness's own token lists are frozen out of its reach (gc.freeze),
the index is not. Reported:
p50/p99/max decision time in microseconds (goal p99 <= 100 us), the decisions over 1 ms and the
full (generation 2) collections during them, and the time of one full gc.collect() with the
index in reach: a pause the router's event loop takes whenever generation 2 fills. The tokenization that precedes a decision
in the router (`tokenworks.router.prompts.PromptTokenizer.tokens`, the model's tokenizer and
chat template) is timed separately, for a chat request of a 1,024-token system prompt and a
64-token question, and for a 1,024-token completions prompt.

(b) added TTFT at concurrency 1: one `tokenworks serve --threads 1` worker pinned to core 0
(KV events on), and two routers in front of it, `--policy kv` and `--policy round-robin`,
with the client, on the other cores (on 2 cores: core 1). Streamed chat requests (256-token
prompts of fresh random words each time, so no request reuses another's cache, 8 output
tokens), one at a time, sent in turn to the worker directly, through the round-robin router
and through the kv router, the order rotated each round, --requests rounds. TTFT = from
sending to the first content chunk, at the client. Reported: median TTFT of each path and the
added median (router - direct); goal: at most 1 ms added at p50.

Results: --json PATH (default .peers/bench-router/cost.json).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import inspect
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_model
from router_policies import free_port, wait_healthy

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / ".peers" / "bench-router"
MODELS = ROOT / ".peers" / "bench-engine" / "models"
BLOCK = 16
VOCAB = 8192
GOAL_DECISION_P99_US = 100.0
GOAL_ADDED_TTFT_MS = 1.0


def log(message: str) -> None:
    print(f"[router_cost] {message}", flush=True)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# ---- (a) the decision --------------------------------------------------------------------------


def decision_cost(args: argparse.Namespace) -> dict:
    from tokenworks.gc_tuning import calm_the_garbage_collector
    from tokenworks.router import prefix_index
    from tokenworks.router.kv_policy import SIBLING_TTL_S, KvAware
    from tokenworks.router.policies import RoutedRequest
    from tokenworks.router.prefix_index import PrefixIndex
    from tokenworks.router.workers import KVEventSource, Worker

    calm_the_garbage_collector()  # the router's own collector settings, made at its startup
    rng = random.Random(args.seed)
    index = PrefixIndex()
    workers = [
        Worker(f"http://10.0.0.{i}:8000", f"w{i}", block_size=BLOCK, kv_events=KVEventSource(f"tcp://10.0.0.{i}:5557"))
        for i in range(args.workers)
    ]
    for worker in workers:
        index.add_worker(worker.id)
        for k in range(8):  # learnt estimates (a few samples each), as after a few answers
            when = (time.monotonic(),) if "now" in inspect.signature(worker.ttft.add).parameters else ()
            worker.ttft.add(200 + 100 * k, 0.01 + 1e-4 * (200 + 100 * k) * rng.uniform(0.9, 1.1), *when)
            worker.tpot.add(1 + k, 0.02 + 1e-3 * k, *when)
    systems = [[rng.randrange(VOCAB) for _ in range(512)] for _ in range(512)]
    weights = [1 / (k + 1) for k in range(len(systems))]
    total = 2 * args.decisions if args.alternate else args.decisions
    tails = [[rng.randrange(VOCAB) for _ in range(512)] for _ in range(total)]
    randoms = [[rng.randrange(VOCAB) for _ in range(1024)] for _ in range(total // 5)]
    # The harness's own token lists are frozen out of the collector's reach (the router holds no
    # such lists); the index built next is not: its collections are the router's own.
    gc.collect()
    gc.freeze()
    stored_prompts: list[list[int]] = []
    engine_hash = 0
    started = time.perf_counter()
    while index.size() < args.blocks:
        prompt = rng.choices(systems, weights)[0] + [rng.randrange(VOCAB) for _ in range(512)]
        worker = rng.choice(workers)
        hashes = list(range(engine_hash, engine_hash + len(prompt) // BLOCK))
        engine_hash += len(hashes)
        index.stored(worker.id, hashes, None, prompt, BLOCK)
        if len(stored_prompts) < 4096:
            stored_prompts.append(prompt)
    fill_s = time.perf_counter() - started
    distinct, indexed = len(index._holders), index.size()
    log(
        f"index: {index.size()} blocks over {len(workers)} workers ({distinct} distinct keys), filled in {fill_s:.1f} s"
    )

    policy = KvAware(index)
    requests = []
    for k in range(total):
        kind = rng.random()
        if kind < 0.6:
            tokens = rng.choices(systems, weights)[0] + tails[k]
        elif kind < 0.8:
            tokens = rng.choice(stored_prompts)
        else:
            tokens = randoms[k % len(randoms)]
        requests.append(RoutedRequest({"model": "m", "max_tokens": 128}, {}, tokens=tokens))
    gc.collect()
    # Untimed decisions until the first predictions expire: the timed ones then pay for the
    # expiry of earlier ones, as in a router that has been running a while. Their prompts are
    # others of the same kinds (a system prompt and a tail of their own, or random), so that
    # the timed prompts are not predicted already.
    warm_prompts = [
        rng.choices(systems, weights)[0] + [rng.randrange(VOCAB) for _ in range(512)] if k % 5 else
        [rng.randrange(VOCAB) for _ in range(1024)]
        for k in range(1000)
    ]  # fmt: skip
    warm_until, k = time.monotonic() + SIBLING_TTL_S + 1.0, 0
    while time.monotonic() < warm_until:
        policy.choose(RoutedRequest({"max_tokens": 128}, {}, tokens=warm_prompts[k % len(warm_prompts)]), workers)
        k += 1
    # With --alternate, every other decision runs the Python loops (prefix_index.compiled off):
    # the two are compared on the same index, in the same minutes of this noisy host.
    compiled = prefix_index.compiled
    times_us, cpu_us, python_us, reasons = [], [], [], {}
    collections = gc.get_stats()[2]["collections"]
    for k, request in enumerate(requests):
        for worker in workers:
            worker.in_flight = rng.randrange(9)
            worker.decoding = worker.in_flight // 2
            worker.pending_prefill_tokens = rng.randrange(4) * 512
        in_python = args.alternate and k % 2 == 1
        prefix_index.compiled = None if in_python else compiled
        c0, t0 = time.thread_time_ns(), time.perf_counter_ns()
        policy.choose(request, workers)
        elapsed_us = (time.perf_counter_ns() - t0) / 1e3
        cpu_elapsed_us = (time.thread_time_ns() - c0) / 1e3
        if in_python:
            python_us.append(elapsed_us)
            continue
        times_us.append(elapsed_us)
        cpu_us.append(cpu_elapsed_us)
        reasons[request.reason] = reasons.get(request.reason, 0) + 1
    prefix_index.compiled = compiled
    full_collections = gc.get_stats()[2]["collections"] - collections
    # A full collection with the index in reach, the harness's lists gone, against one without it.
    del requests, tails, randoms, stored_prompts, systems
    gc.unfreeze()
    gc.collect()
    t0 = time.perf_counter()
    gc.collect()
    index_gc_ms = (time.perf_counter() - t0) * 1e3
    del policy, index
    gc.collect()
    t0 = time.perf_counter()
    gc.collect()
    full_gc_ms = (time.perf_counter() - t0) * 1e3

    from tokenworks.router.prompts import PromptTokenizer

    tokenizer = PromptTokenizer(args.model)
    from tokenworks.bench.prompts import ModelTokenizer, PromptText

    text = PromptText(ModelTokenizer.load(args.model))
    chat_us, completion_us, lengths = [], [], []
    for _ in range(args.tokenizations):
        system, question = text.make(1024, rng)[0], text.make(64, rng)[0]
        body = {"messages": [{"role": "system", "content": system}, {"role": "user", "content": question}]}
        t0 = time.perf_counter_ns()
        tokens = tokenizer.tokens("/v1/chat/completions", body)
        chat_us.append((time.perf_counter_ns() - t0) / 1e3)
        lengths.append(len(tokens))
        t0 = time.perf_counter_ns()
        tokenizer.tokens("/v1/completions", {"prompt": system})
        completion_us.append((time.perf_counter_ns() - t0) / 1e3)
    return {
        "workers": len(workers), "indexed_blocks": indexed, "distinct_keys": distinct, "fill_s": fill_s,
        "decisions": len(times_us), "decision_p50_us": percentile(times_us, 0.5),
        "decision_p99_us": percentile(times_us, 0.99), "decision_max_us": max(times_us),
        "decision_mean_us": statistics.fmean(times_us), "reasons": reasons,
        "decision_cpu_p50_us": percentile(cpu_us, 0.5), "decision_cpu_p99_us": percentile(cpu_us, 0.99),
        "decisions_over_1ms": sum(t > 1000 for t in times_us), "full_gc_during": full_collections,
        "compiled": compiled is not None,
        "python_loops_p50_us": percentile(python_us, 0.5) if python_us else None,
        "python_loops_p99_us": percentile(python_us, 0.99) if python_us else None,
        "gc_full_collection_ms": index_gc_ms, "gc_without_index_ms": full_gc_ms,
        "chat_tokens": statistics.median(lengths),
        "tokenize_chat_p50_us": percentile(chat_us, 0.5), "tokenize_chat_p99_us": percentile(chat_us, 0.99),
        "tokenize_completion_p50_us": percentile(completion_us, 0.5),
        "tokenize_completion_p99_us": percentile(completion_us, 0.99),
    }  # fmt: skip


# ---- (b) the TTFT it adds ---------------------------------------------------------------------------


def spawn(command: list[str], name: str, cores: list[int]) -> subprocess.Popen:
    (WORK / "logs").mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIRTUAL_ENV")}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    out = (WORK / "logs" / f"cost-{name}.log").open("w")
    return subprocess.Popen(
        command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True,
        preexec_fn=lambda: os.sched_setaffinity(0, cores),
    )  # fmt: skip


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=40)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


async def ttft_rounds(paths: dict[str, str], args: argparse.Namespace) -> dict[str, list[float]]:
    import aiohttp

    from tokenworks.bench.prompts import ModelTokenizer, PromptText

    text = PromptText(ModelTokenizer.load(args.model))
    rng = random.Random(args.seed + 1)
    names = list(paths)
    ttfts: dict[str, list[float]] = {name: [] for name in names}
    async with aiohttp.ClientSession() as session:

        async def one(url: str, prompt: str) -> float:
            body = {
                "model": args.shape, "stream": True, "max_tokens": 8, "temperature": 0,
                "messages": [{"role": "user", "content": prompt}],
            }  # fmt: skip
            t0 = time.perf_counter()
            first = None
            async with session.post(f"{url}/v1/chat/completions", json=body) as response:
                assert response.status == 200, await response.text()
                async for line in response.content:
                    if first is None and line.startswith(b"data: {") and b'"content"' in line:
                        first = time.perf_counter()
            return (first or time.perf_counter()) - t0

        for _k in range(3):  # warm-up, not counted
            for name in names:
                await one(paths[name], text.make(args.prompt_tokens, rng)[0])
        for round_ in range(args.requests):
            order = names[round_ % len(names) :] + names[: round_ % len(names)]
            for name in order:
                ttfts[name].append(await one(paths[name], text.make(args.prompt_tokens, rng)[0]))
    return ttfts


def added_ttft(args: argparse.Namespace) -> dict:
    cores = sorted(os.sched_getaffinity(0))
    worker_cores, rest = cores[:1], cores[1:] or cores[:1]
    kv_events = json.dumps(
        {"enable_kv_cache_events": True, "endpoint": "tcp://127.0.0.1:*", "replay_endpoint": "tcp://127.0.0.1:*"}
    )
    port = free_port()
    worker_url = f"http://127.0.0.1:{port}"
    processes = []
    try:
        processes.append(spawn([
            sys.executable, "-m", "tokenworks", "serve", str(args.model), "--port", str(port), "--threads", "1",
            "--served-model-name", args.shape, "--kv-events-config", kv_events, "--kv-cache-memory-gib", "0.5",
        ], "worker", worker_cores))  # fmt: skip
        wait_healthy(worker_url, processes[-1], "the worker")
        paths = {"direct": worker_url}
        for policy in ("round-robin", "kv"):
            router_port = free_port()
            processes.append(spawn([
                sys.executable, "-m", "tokenworks", "router", "--worker", worker_url, "--policy", policy,
                "--port", str(router_port), "--tokenizer", str(args.model),
            ], f"router-{policy}", rest))  # fmt: skip
            paths[f"router {policy}"] = f"http://127.0.0.1:{router_port}"
            wait_healthy(paths[f"router {policy}"], processes[-1], f"the {policy} router")
        time.sleep(1.0)  # the kv router finds the worker's events
        os.sched_setaffinity(0, rest)  # the client beside the routers, off the worker's core
        ttfts = asyncio.run(ttft_rounds(paths, args))
    finally:
        for process in reversed(processes):
            stop(process)
    medians = {name: statistics.median(values) * 1e3 for name, values in ttfts.items()}
    # paired: each round's router TTFT minus the same round's direct one
    added = {
        name: statistics.median([(r - d) * 1e3 for r, d in zip(ttfts[name], ttfts["direct"], strict=True)])
        for name in ttfts if name != "direct"
    }  # fmt: skip
    return {
        "worker_cores": worker_cores, "router_and_client_cores": rest, "rounds": args.requests,
        "prompt_tokens": args.prompt_tokens, "ttft_p50_ms": medians,
        "ttft_p90_ms": {name: percentile(values, 0.9) * 1e3 for name, values in ttfts.items()},
        "added_p50_ms": {name: medians[name] - medians["direct"] for name in added},
        "added_paired_median_ms": added,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="decision,ttft")
    parser.add_argument("--workers", type=int, default=64)
    parser.add_argument("--blocks", type=int, default=1_000_000)
    parser.add_argument("--decisions", type=int, default=20_000)
    parser.add_argument(
        "--alternate", action=argparse.BooleanOptionalAction, default=True,
        help="(a): every other decision in the Python loops (as many again), for the compiled ones' gain",
    )  # fmt: skip
    parser.add_argument("--tokenizations", type=int, default=200)
    parser.add_argument("--shape", choices=("tiny", "small"), default="tiny")
    parser.add_argument("--requests", type=int, default=40, help="(b): rounds of direct / round-robin / kv.")
    parser.add_argument("--prompt-tokens", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=WORK / "cost.json")
    args = parser.parse_args()
    args.model = (MODELS / args.shape).resolve()
    parts = [p.strip() for p in args.parts.split(",")]
    print(f"machine: {cpu_model()}, {len(os.sched_getaffinity(0))} cores usable; python {sys.version.split()[0]}")
    report: dict = {"machine": cpu_model(), "config": {k: str(v) for k, v in vars(args).items()}}
    if "decision" in parts:
        d = decision_cost(args)
        report["decision"] = d
        print(f"\n(a) KvAware.choose: {d['workers']} workers, {d['indexed_blocks']:,} indexed blocks "
              f"({d['distinct_keys']:,} distinct), block size {BLOCK}, 1,024-token prompts, {d['decisions']:,} decisions")  # fmt: skip
        print(f"    decision p50 {d['decision_p50_us']:.1f} us, p99 {d['decision_p99_us']:.1f} us, "
              f"max {d['decision_max_us']:.0f} us, mean {d['decision_mean_us']:.1f} us; reasons {d['reasons']}")  # fmt: skip
        if d["python_loops_p50_us"] is not None:
            print(f"    the Python loops on the same tables (every other decision): p50 {d['python_loops_p50_us']:.1f} us, "
                  f"p99 {d['python_loops_p99_us']:.1f} us")  # fmt: skip
        print(f"    the same decisions in the thread's CPU time (preemption by other processes left out): "
              f"p50 {d['decision_cpu_p50_us']:.1f} us, p99 {d['decision_cpu_p99_us']:.1f} us")  # fmt: skip
        print(f"    decisions over 1 ms: {d['decisions_over_1ms']} ({d['full_gc_during']} full GC collections during them); "
              f"one full gc.collect() with the index in reach: {d['gc_full_collection_ms']:.0f} ms "
              f"(without the index: {d['gc_without_index_ms']:.1f} ms)")  # fmt: skip
        print(f"    tokenization (PromptTokenizer.tokens, {args.shape}'s tokenizer): chat of {d['chat_tokens']:.0f} tokens "
              f"p50 {d['tokenize_chat_p50_us']:.0f} us, p99 {d['tokenize_chat_p99_us']:.0f} us; 1,024-token completion "
              f"p50 {d['tokenize_completion_p50_us']:.0f} us, p99 {d['tokenize_completion_p99_us']:.0f} us")  # fmt: skip
        ok = d["decision_p99_us"] <= GOAL_DECISION_P99_US
        print(f"    goal: decision p99 <= {GOAL_DECISION_P99_US:.0f} us: measured {d['decision_p99_us']:.1f} us  "
              f"{'PASS' if ok else 'MISS'}")  # fmt: skip
        report["decision_goal_pass"] = ok
    if "ttft" in parts:
        t = added_ttft(args)
        report["ttft"] = t
        print(f"\n(b) TTFT at concurrency 1, streamed, {t['prompt_tokens']}-token prompts, 8 out, {t['rounds']} rounds "
              f"interleaved; worker on core {t['worker_cores']}, routers and client on cores {t['router_and_client_cores']}")  # fmt: skip
        print(f"    {'path':<20} {'TTFT p50':>9} {'TTFT p90':>9} {'added p50':>10} {'added (paired)':>15}")
        for name, median in t["ttft_p50_ms"].items():
            added = t["added_p50_ms"].get(name)
            paired = t["added_paired_median_ms"].get(name)
            print(f"    {name:<20} {median:>9.2f} {t['ttft_p90_ms'][name]:>9.2f} "
                  f"{(f'{added:+.2f}' if added is not None else '-'):>10} {(f'{paired:+.2f}' if paired is not None else '-'):>15}")  # fmt: skip
        for name, added in t["added_p50_ms"].items():
            print(f"    goal: {name} adds <= {GOAL_ADDED_TTFT_MS:.0f} ms at p50: measured {added:+.2f} ms  "
                  f"{'PASS' if added <= GOAL_ADDED_TTFT_MS else 'MISS'}")  # fmt: skip
        print(
            "    (times in ms; added p50 = median(router) - median(direct); paired = median of per-round differences)"
        )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
    log(f"results in {args.json}")


if __name__ == "__main__":
    main()
