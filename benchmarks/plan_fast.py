"""The fast mode: requests simulated per wall second, and its agreement with the exact mode.

    .venv/bin/python benchmarks/plan_fast.py [--requests 1000000] [--num-requests 256] [--skip-agreement]

Not a test and not run in CI. Issue 23 asks the fast mode (fast.py: batch totals and closed-form
runs of decode steps) to simulate 1 million requests in under 60 s on one core, validated against
the exact mode (the engine's own scheduler on a simulated clock) within 5% on TTFT p50, TPOT p50
and output throughput, on a concurrency sweep and a Poisson sweep of the tiny shape's fitted
latency (the model and profile benchmarks/plan_speed.py builds in .peers/plan-speed).

Speed: --requests requests of Llama 3.1 8B's shape on one H100 (DatasheetLatency), 1,024
prompt tokens and 256 output tokens each, Poisson at 12 requests/s (a busy replica, batches
of ~100), one Python thread, the workload arrays and the metrics included.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

LLAMA_31_8B = {
    "architectures": ["LlamaForCausalLM"], "hidden_size": 4096, "intermediate_size": 14336,
    "num_attention_heads": 32, "num_key_value_heads": 8, "num_hidden_layers": 32, "vocab_size": 128256,
    "max_position_embeddings": 131072, "torch_dtype": "bfloat16", "tie_word_embeddings": False,
}  # fmt: skip


def speed(count: int) -> None:
    from tokenworks.model.config import ModelConfig
    from tokenworks.plan.fast import FastEngine, run_replica
    from tokenworks.plan.fast_load import FastLoad, Sends
    from tokenworks.plan.fast_results import summarize_fast
    from tokenworks.plan.fast_workload import from_lengths
    from tokenworks.plan.latency import DatasheetLatency
    from tokenworks.plan.linear_step import LinearStep

    began = time.perf_counter()
    latency = DatasheetLatency("H100", ModelConfig.from_hf_dict(LLAMA_31_8B))
    requests = from_lengths("1024", "256", count, 16)
    engine = FastEngine(num_kv_blocks=int(latency.kv_cache_bytes() // (16 * 131072)), block_size=16,
                        max_num_batched_tokens=8192)  # fmt: skip
    run = run_replica(engine, LinearStep.of(latency), requests, Sends(FastLoad(count, request_rate=12.0)))
    summary = summarize_fast(run)
    wall = time.perf_counter() - began
    print(f"fast mode: {count:,} requests (Llama 3.1 8B shape, H100 datasheet, 1024 in / 256 out, Poisson 12/s)")
    print(f"  {wall:,.1f} s wall ({run.wall_seconds:,.1f} s the replica's loop) -> {count / wall:,.0f} requests per "
          f"wall second; {run.steps:,} steps, {run.end:,.0f} simulated s; host load {os.getloadavg()[0]:.2f}")  # fmt: skip
    print(f"  TTFT p50 {summary.ttft.p50 * 1e3:,.1f} ms, TPOT p50 {summary.tpot.p50 * 1e3:,.2f} ms, "
          f"output {summary.output_throughput:,.0f} tokens/s")  # fmt: skip


def agreement(num_requests: int) -> None:
    from plan_speed import CACHE, build_tiny, ensure_profile

    from tokenworks.bench.loadgen import LoadOptions
    from tokenworks.bench.workloads import WorkloadOptions
    from tokenworks.model.config import ModelConfig
    from tokenworks.plan.agreement import compare
    from tokenworks.plan.latency import FittedLatency
    from tokenworks.plan.profiles import Profile
    from tokenworks.plan.prompts import SimPrompts
    from tokenworks.plan.simulate import Fleet, replica_config

    model = build_tiny(CACHE / "tiny")
    profile = Profile.load(ensure_profile(model, CACHE / "profile.json"))
    config, latency = ModelConfig.load(model), FittedLatency.from_profile(profile)
    prompts = SimPrompts.load(model)
    base = LoadOptions(num_requests=num_requests, warmup_requests=2)
    print(f"\nexact vs fast, tiny shape, fitted latency ({latency.describe()}), {num_requests} requests a point")
    print(f"{'workload, KV cache':<34} {'point':<28} {'metric':<18} {'exact':>11} {'fast':>11} {'error':>8}")
    block = int(profile.engine.get("block_size", 128))
    cases = [
        ("128", "128", replica_config(config, block), "engine default"),
        ("64:512", "16:256", replica_config(config, block), "engine default"),
        ("64:512", "16:256", replica_config(config, 16, num_kv_blocks=150), "150 x 16 tokens"),
    ]  # fmt: skip
    for inputs, outputs, engine, cache in cases:
        workload = WorkloadOptions(api="chat", input_tokens=inputs, output_tokens=outputs)
        points = [(c, None) for c in (1, 2, 4, 8, 16, 32)] + [(None, r) for r in (5.0, 10.0, 15.0, 20.0)]
        within = 0
        rows = compare(Fleet(engine, latency), prompts, workload, base, points)
        for row in rows:
            verdict = "" if abs(row.error) <= 0.05 else "  > 5%"
            within += not verdict
            print(f"{f'{inputs} / {outputs}, {cache}':<34} {row.point:<28} {row.metric:<18} {row.exact:>11.4f} "
                  f"{row.fast:>11.4f} {row.error:>+8.2%}{verdict}")  # fmt: skip
        print(f"{within} of {len(rows)} cells within 5%")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1_000_000)
    parser.add_argument("--num-requests", type=int, default=256)
    parser.add_argument("--skip-agreement", action="store_true")
    args = parser.parse_args()
    speed(args.requests)
    if not args.skip_agreement:
        agreement(args.num_requests)


if __name__ == "__main__":
    main()
