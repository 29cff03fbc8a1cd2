"""Two checkouts of tokenworks served side by side: what an engine change does to what users see.

    .venv/bin/python benchmarks/serve_ab.py --base REF [--shapes tiny,small] [--repeats 3] [--json PATH]

Not a test and not run in CI. Checks REF out into a git worktree (.peers/serve-ab/base) and runs
the same workloads against `tokenworks serve` from each tree in turn (base, this tree, base, ...:
interleaved, so the host's drift falls on both alike), each server pinned to core 0 with
--threads 1 and a 1 GiB KV cache, the load generator (this tree's `tokenworks bench run`,
streamed, timed in the caller) pinned to core 1. Both trees run in this tree's virtual
environment, each from its own directory (which `python -m` puts first on the path); their
compiled kernels are cached apart (the build's name carries a digest of its sources). Each run
starts a fresh server. It prints each figure's median over the repeats, each tree's, and the
ratio this tree / base.

Workloads (greedy, exact token counts under the model's tokenizer):
  cold     synthetic chat prompts of 512 tokens, 32 out, concurrency 1: prefill from nothing
  shared   shared-prefix, 4 system prompts of 1,024 tokens x 8 questions of 128, 32 out,
           concurrency 4: prefill chunks after a cached prefix, beside decodes
  decode   synthetic, 128 in, 128 out, concurrency 8: mostly decode steps

Models: .peers/bench-engine/models/{tiny,small} (benchmarks/engine_vs_peers.py builds them).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_model
from router_policies import free_port, stop, thread_env, wait_healthy

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / ".peers" / "bench-engine" / "models"
WORK = ROOT / ".peers" / "serve-ab"
WORKLOADS = {
    "cold": (["--workload", "synthetic", "--input-tokens", "512", "--output-tokens", "32"], 1, 16),
    "shared": (["--workload", "shared-prefix", "--num-prefixes", "4", "--questions-per-prefix", "8", "--prefix-tokens",
                "1024", "--input-tokens", "128", "--output-tokens", "32"], 4, 32),
    "decode": (["--workload", "synthetic", "--input-tokens", "128", "--output-tokens", "128"], 8, 32),
}  # fmt: skip
FIGURES = {"ttft_p50_s": "TTFT p50", "tpot_p50_s": "TPOT p50", "output_throughput": "out tok/s"}


def log(message: str) -> None:
    print(f"[serve_ab] {message}", flush=True)


def base_tree(ref: str) -> Path:
    """A worktree of REF (made again when REF moved)."""
    tree = WORK / "base"
    commit = subprocess.run(["git", "rev-parse", ref], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    if tree.exists():
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tree, capture_output=True, text=True).stdout
        if head == commit:
            return tree
        subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, check=True)
    subprocess.run(["git", "worktree", "add", "--detach", str(tree), commit.strip()], cwd=ROOT, check=True,
                   capture_output=True)  # fmt: skip
    return tree


def run_once(tree: Path | None, model: Path, workload: str, out: Path) -> dict[str, float]:
    """A fresh server from `tree` (None: this one), one bench run against it; its figures."""
    port = free_port()
    logs = out.with_suffix(".server.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "tokenworks", "serve", str(model), "--host", "127.0.0.1", "--port", str(port),
         "--threads", "1", "--kv-cache-memory-gib", "1"],
        stdout=logs, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=thread_env(1), cwd=tree or ROOT,
        start_new_session=True,
        preexec_fn=lambda: os.sched_setaffinity(0, [0]),
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, server, "the server", 300)
        options, concurrency, requests = WORKLOADS[workload]
        if out.exists():
            shutil.rmtree(out)
        command = [sys.executable, "-m", "tokenworks", "bench", "run", "--url", url, "--tokenizer", str(model),
                   *options, "--concurrency", str(concurrency), "--num-requests", str(requests), "--temperature", "0",
                   "--out", str(out)]  # fmt: skip
        subprocess.run(command, check=True, capture_output=True, env=thread_env(1), cwd=ROOT,
                       preexec_fn=lambda: os.sched_setaffinity(0, [1]))  # fmt: skip
    finally:
        stop(server, 30)
        logs.close()
    with (out / "points.csv").open() as handle:
        row = next(csv.DictReader(handle))
    return {key: float(row[key]) for key in FIGURES}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="The git ref to compare this tree with.")
    parser.add_argument("--shapes", default="tiny,small")
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=WORK / "results.json")
    args = parser.parse_args()
    base = base_tree(args.base)
    head = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True, text=True).stdout
    log(f"{cpu_model()}, {os.cpu_count()} cores; base {args.base} against this tree ({head.strip()}); servers on "
        f"core 0 (--threads 1), the load generator on core 1; {args.repeats} repeats, interleaved")  # fmt: skip
    results: dict[str, dict[str, dict[str, list[float]]]] = {}
    for shape in args.shapes.split(","):
        model = MODELS / shape
        for workload in args.workloads.split(","):
            key = f"{shape} {workload}"
            figures = results.setdefault(key, {"base": {}, "this": {}})
            for repeat in range(args.repeats):
                for side, tree in (("base", base), ("this", None)):
                    out = WORK / shape / f"{workload}-{side}-r{repeat + 1}"
                    out.parent.mkdir(parents=True, exist_ok=True)
                    measured = run_once(tree, model, workload, out)
                    for name, value in measured.items():
                        figures[side].setdefault(name, []).append(value)
                    log(
                        f"{key} {side} r{repeat + 1}: "
                        + ", ".join(f"{FIGURES[n]} {v:.4g}" for n, v in measured.items())
                    )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=1) + "\n")
    print(f"{'shape workload':16} " + " ".join(f"{FIGURES[n]:>28}" for n in FIGURES))
    for key, figures in results.items():
        cells = []
        for name in FIGURES:
            before, after = statistics.median(figures["base"][name]), statistics.median(figures["this"][name])
            cells.append(f"{before:>9.4g} -> {after:>9.4g} {after / before:5.2f}x")
        print(f"{key:16} " + " ".join(f"{cell:>28}" for cell in cells))
    print("medians of the repeats, base -> this tree, and the ratio this / base (TTFT, TPOT: lower is better)")


if __name__ == "__main__":
    main()
