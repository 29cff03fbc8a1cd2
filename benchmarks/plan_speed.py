"""How fast the exact simulator runs: simulated seconds per wall second, tiny shape, concurrency 32.

    .venv/bin/python benchmarks/plan_speed.py [--model DIR] [--profile PATH] [--concurrency 32]
        [--num-requests 512] [--input-tokens 128] [--output-tokens 128] [--replicas 1] [--repeats 3]

Not a test and not run in CI. Issue 23 asks the exact mode (the engine's own scheduler and KV
cache manager on a simulated clock, `tokenworks plan simulate`) to run at least 100x faster
than real time for the tiny shape at concurrency 32.

Without --model it builds the `tiny` preset (random weights, an 8,192-token tokenizer trained on
the Python docs) in .peers/plan-speed/tiny; without --profile it profiles that model with
`tokenworks plan profile --quick` into .peers/plan-speed/profile.json (under a minute), once.
Then it simulates `tokenworks bench run`'s default workload (synthetic chat prompts of
--input-tokens, --output-tokens each, 2 warmup requests) at --concurrency, closed loop, with
the step times of the model fitted to the profile (FittedLatency), --repeats times, and prints
the median run: steps, simulated seconds, wall seconds, simulated seconds per wall second, and
simulated requests per wall second. Two wall times: "whole" is what `plan simulate` spends on a
point (the workload's prompts built and tokenized, then the event loop), "loop" the event loop
alone (the exact mode's own cost). The machine's load is printed with them: the figure is a
single Python thread's, and other work on the host slows it.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".peers" / "plan-speed"


def build_tiny(directory: Path) -> Path:
    if (directory / "config.json").is_file():
        return directory
    from tokenworks.data import python_docs
    from tokenworks.model import CausalLM, Tokenizer, preset_config, save_model

    print(f"building the tiny preset with random weights in {directory}", flush=True)
    texts = [d.text for d in itertools.islice(python_docs(include_modules=False), 300)]
    tokenizer = Tokenizer.train(texts, vocab_size=8192)
    config = preset_config("tiny", tokenizer.vocab_size, eos_token_id=tokenizer.eos_token_id)
    directory.mkdir(parents=True, exist_ok=True)
    save_model(CausalLM(config).init_weights(seed=0), directory)
    tokenizer.save(directory)
    return directory


def ensure_profile(model: Path, path: Path) -> Path:
    if path.is_file():
        return path
    print(f"profiling {model} (tokenworks plan profile --quick) into {path}", flush=True)
    command = [sys.executable, "-m", "tokenworks", "plan", "profile", str(model), "--quick", "--out", str(path)]
    subprocess.run(command, check=True)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--profile", type=Path, default=None)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--num-requests", type=int, default=512)
    parser.add_argument("--input-tokens", default="128")
    parser.add_argument("--output-tokens", default="128")
    parser.add_argument("--api", default="chat")
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument("--router-policy", default="kv")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    model = args.model or build_tiny(CACHE / "tiny")
    profile = args.profile or ensure_profile(model, CACHE / "profile.json")

    from tokenworks.bench.loadgen import LoadOptions
    from tokenworks.bench.workloads import WorkloadOptions, build_workload
    from tokenworks.model.config import ModelConfig
    from tokenworks.plan.latency import FittedLatency
    from tokenworks.plan.load import WorkloadLoad
    from tokenworks.plan.profiles import Profile
    from tokenworks.plan.prompts import SimPrompts
    from tokenworks.plan.simulate import Fleet, replica_config

    config = ModelConfig.load(model)
    measured = Profile.load(profile)
    measured.check_model(config, f"the profile {profile}")
    latency = FittedLatency.from_profile(measured)
    engine = replica_config(config, int(measured.engine.get("block_size", 128)))
    fleet = Fleet(engine, latency, args.replicas, args.router_policy)
    prompts = SimPrompts.load(model)
    workload = WorkloadOptions(api=args.api, input_tokens=args.input_tokens, output_tokens=args.output_tokens)
    load = LoadOptions(concurrency=args.concurrency, num_requests=args.num_requests, warmup_requests=2)

    runs = []
    for _ in range(args.repeats):
        began = time.perf_counter()
        simulation = fleet.build()
        driver = WorkloadLoad(build_workload(workload, 0, prompts.counter), load, prompts)
        stats = simulation.run(driver)
        runs.append((time.perf_counter() - began, stats))
    whole, stats = sorted(runs, key=lambda run: run[0])[len(runs) // 2]
    requests = len(driver.records)

    print(f"shape: {model.name} ({config.num_parameters():,} parameters, {config.num_hidden_layers} layers, "
          f"hidden {config.hidden_size}); profile {profile} ({latency.describe()})")  # fmt: skip
    print(f"workload: {args.api}, {args.input_tokens} in / {args.output_tokens} out, closed loop at concurrency "
          f"{args.concurrency}, {args.num_requests} requests + 2 warmup; {args.replicas} replica(s)"
          f"{f' behind {args.router_policy}' if args.replicas > 1 else ''}; block size {engine.block_size}")  # fmt: skip
    print(f"host load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores; median of {args.repeats} runs")
    print(f"steps {stats.steps:,}; simulated {stats.end:,.2f} s ({stats.end / stats.steps * 1e3:.2f} ms a step)")
    for name, wall in (("whole", whole), ("loop", stats.wall_seconds)):
        print(f"{name:>5}: {wall:,.3f} s wall -> {stats.end / wall:,.0f} simulated s per wall s, "
              f"{requests / wall:,.0f} simulated requests per wall s, {wall / stats.steps * 1e6:,.0f} us a step")  # fmt: skip
    ratios = [run.end / wall for wall, run in runs]
    print(
        f"every run's whole ratio: {', '.join(f'{ratio:,.0f}x' for ratio in ratios)}; "
        f"median {statistics.median(ratios):,.0f}x (goal >= 100x)"
    )


if __name__ == "__main__":
    main()
