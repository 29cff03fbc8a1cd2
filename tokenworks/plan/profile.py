"""`tokenworks plan profile`: the engine's real step times on this machine, over a grid of shapes.

The only module of the package that imports torch. It runs an `EngineCore` in this process on
crafted requests and times `core.step()` (schedule, model, sampling, update: the whole step, as a
server's core runs it), recording the exact `StepShape` the scheduler chose for each timed step.
A grid point is one shape repeated: prefill chunks are fresh requests each time (the same shape
exactly); decode steps are consecutive steps of one running batch (contexts move on by a token a
repeat); mixed steps are a fresh prefill chunk beside that batch. A point keeps its median step.
Before the steps: the matmul FLOP/s at the model's own product sizes and the memory bandwidth.
"""

from __future__ import annotations

import datetime
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from tokenworks import __version__
from tokenworks.engine.core import EngineCore
from tokenworks.engine.options import EngineOptions
from tokenworks.engine.sampling_params import SamplingParams
from tokenworks.model.config import ModelConfig
from tokenworks.plan.profiles import Profile, Sample, config_hash
from tokenworks.plan.roofline import step_cost
from tokenworks.plan.step import StepShape

DECODE_TOKENS = 200  # each decode request's max_tokens: more than every step its batch runs
# A point is taken again when other processes kept more than this many CPUs busy beyond those the
# engine leaves free: on a shared machine whole points would otherwise be seconds of someone
# else's work (a fit on one such profile missed a contended context's steps by 60-88%).
RETAKE_OTHERS = 0.25


@dataclass(frozen=True, slots=True)
class Grid:
    batches: tuple[int, ...]  # decode batch sizes, largest first (each halves the running batch)
    contexts: tuple[int, ...]  # decode contexts
    chunks: tuple[int, ...]  # prefill chunk lengths
    cached: tuple[int, ...]  # contexts before a prefill chunk (0, and prefix-cached ones)
    mixed: tuple[tuple[int, int], ...]  # (decode batch, prefill chunk) steps
    repeats: int
    token_cap: int  # a decode context's whole batch holds at most this many tokens
    matmul_seconds: float
    bandwidth_mib: int
    budget_seconds: float  # the steps' estimated time, retakes included: the largest points go first

    @classmethod
    def for_run(cls, quick: bool) -> Grid:
        # The short chunks (8 and 16 tokens) are the step a request whose prompt the prefix cache
        # holds makes: its last, uncached tokens after a cached context. Few rows run below the
        # roofline's line (latency.RowOverheads), so the fit has to see them.
        if quick:
            return cls((8, 2, 1), (64, 256), (8, 32, 128, 512), (0, 128), ((2, 128),), 3, 2048, 0.15, 64, 15.0)
        return cls(
            (32, 16, 8, 4, 2, 1), (64, 256, 1024), (8, 16, 32, 128, 512, 2048), (0, 256, 1024),
            ((4, 128), (16, 512)), 5, 8192, 0.5, 256, 180.0,
        )  # fmt: skip


def run_profile(
    model_dir: str | Path, threads: int | None = None, quick: bool = False,
    on_start: Callable[[int], Callable[..., None]] | None = None,
) -> Profile:  # fmt: skip
    """Measure the machine and the engine's steps; `on_start(points)` returns the per-point callback."""
    started = time.perf_counter()
    grid = Grid.for_run(quick)
    config = ModelConfig.load(model_dir)
    options = EngineOptions(model=str(model_dir), threads=threads)
    options.num_kv_blocks = _kv_blocks(grid, options.resolved_block_size(options.resolved_device()))
    core = EngineCore(options)
    device = core.model.device  # measured where the engine runs
    matmul = measure_matmul(config, grid.matmul_seconds, device)
    bandwidth = measure_bandwidth(grid.bandwidth_mib, grid.matmul_seconds, device)
    peak = matmul[_dtype_key(core.model.dtype)] or matmul["float32"]
    estimate = _Estimate(config, peak, grid.repeats)
    points = _affordable(list(_plan(grid, _Limits.of(core))), estimate, grid.budget_seconds)
    advance = on_start(len(points)) if on_start is not None else (lambda *_: None)
    samples = _StepTimer(core, grid.repeats).run(points, advance)
    return Profile(
        machine=machine_info(torch.get_num_threads(), device),
        model=config,
        model_hash=config_hash(config),
        engine={
            "device": str(core.model.device),
            "dtype": str(core.model.dtype).removeprefix("torch."),
            "block_size": core.kv_cache.block_size,
            "max_num_batched_tokens": options.max_num_batched_tokens,
            "max_num_seqs": options.max_num_seqs,
            "max_model_len": core.max_model_len,
            "kernels": "compiled" if core.runner.kernels is not None else "torch",
            "omp_spin_count": os.environ.get("GOMP_SPINCOUNT"),
        },
        matmul_flops=matmul,
        peak_flops=peak,
        bandwidth=bandwidth,
        peak_bandwidth=bandwidth["read"],
        samples=samples,
        created=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        quick=quick,
        seconds=time.perf_counter() - started,
    )


# ---- the machine -------------------------------------------------------------------------


def machine_info(threads: int, device: torch.device) -> dict:
    return {
        "cpu": cpu_model(), "cores": os.cpu_count(), "threads": threads, "torch": torch.__version__,
        "bf16_matmul_in_hardware": "avx512_bf16" in _cpu_flags() or "amx_bf16" in _cpu_flags(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "tokenworks": __version__,
    }  # fmt: skip


def cpu_model() -> str:
    for line in _cpuinfo().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def _cpu_flags() -> set[str]:
    for line in _cpuinfo().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def measure_matmul(config: ModelConfig, seconds: float, device: torch.device) -> dict[str, float | None]:
    """Best FLOP/s of (512, hidden) x (hidden, intermediate) products, a prefill chunk's MLP, in
    float32 and bfloat16 (None where torch has no bfloat16 product on this device)."""
    rows, h, inter = 512, config.hidden_size, config.intermediate_size
    result: dict[str, float | None] = {}
    for dtype in (torch.float32, torch.bfloat16):
        try:
            a = torch.randn(rows, h, dtype=dtype, device=device)
            b = torch.randn(h, inter, dtype=dtype, device=device)
            best = _best(lambda a=a, b=b: torch.mm(a, b), seconds, device)
            result[_dtype_key(dtype)] = 2 * rows * h * inter / best
        except RuntimeError:
            result[_dtype_key(dtype)] = None
    return result


def measure_bandwidth(mib: int, seconds: float, device: torch.device) -> dict[str, float]:
    """Bytes/s of a large float32 copy (a read and a write per byte copied) and of a sum (reads only)."""
    source = torch.ones(mib * 2**20 // 4, device=device)
    target = torch.empty_like(source)
    copy = _best(lambda: target.copy_(source), seconds, device)
    read = _best(lambda: source.sum(), seconds, device)
    return {"copy": 2 * source.nbytes / copy, "read": source.nbytes / read}


def _best(run: Callable[[], object], seconds: float, device: torch.device) -> float:
    """The fastest of repeated runs over about `seconds` (after a warm-up run); on a GPU each run
    is waited for, as its kernels return before they finish."""

    def timed() -> float:
        start = time.perf_counter()
        run()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    timed()
    best, deadline = float("inf"), time.perf_counter() + seconds
    while True:
        best = min(best, timed())
        if time.perf_counter() > deadline:
            return best


def _dtype_key(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


# ---- the grid ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Limits:
    block_size: int
    budget: int  # max_num_batched_tokens
    max_model_len: int

    @classmethod
    def of(cls, core: EngineCore) -> _Limits:
        return cls(core.kv_cache.block_size, core.options.max_num_batched_tokens, core.max_model_len)


@dataclass(frozen=True, slots=True)
class _Point:
    kind: str  # "prefill", "decode", "mixed"
    name: str
    tokens: int = 0  # the prefill chunk
    context: int = 0  # cached context before the chunk, or the decode context
    batch: int = 0  # decodes


def _plan(grid: Grid, limits: _Limits) -> Iterator[_Point]:
    """The grid points this engine can run: chunks within the token budget and the context,
    cached contexts in whole blocks (the prefix cache shares only those)."""
    for cached in grid.cached:
        cached = cached // limits.block_size * limits.block_size
        for tokens in grid.chunks:
            if tokens <= limits.budget and cached + tokens < limits.max_model_len:
                yield _Point("prefill", f"prefill {tokens} after {cached}", tokens, cached)
    for context in grid.contexts:
        if context + DECODE_TOKENS >= limits.max_model_len:
            continue
        for batch in grid.batches:
            if batch * context <= grid.token_cap:
                yield _Point("decode", f"decode {batch}x{context}", context=context, batch=batch)
                for mixed_batch, tokens in grid.mixed:
                    if mixed_batch == batch and batch + tokens <= limits.budget:
                        yield _Point("mixed", f"prefill {tokens} + decode {batch}x{context}", tokens, context, batch)


@dataclass(frozen=True, slots=True)
class _Estimate:
    """A rough forecast of a point's seconds, before measuring: its FLOPs at half the
    matmul peak (small products and attention run below it), plus a few milliseconds a step."""

    config: ModelConfig
    peak_flops: float
    repeats: int

    def step(self, chunks: tuple[tuple[int, int], ...]) -> float:
        return step_cost(self.config, StepShape(chunks)).flops / (0.5 * self.peak_flops) + 0.005

    def point(self, point: _Point, fills: bool) -> float:
        """With `fills`, the point is its context's first and pays for prefilling the batch."""
        steps = self.repeats + 1
        if point.kind == "prefill":
            return steps * self.step(((point.tokens, point.context),)) + self.step(((point.context + 1, 0),))
        decodes = ((1, point.context),) * point.batch
        work = steps * self.step(decodes + (((point.tokens, 0),) if point.kind == "mixed" else ()))
        return work + (self.step(((point.context, 0),) * point.batch) if fills else 0.0)


def _affordable(points: list[_Point], estimate: _Estimate, budget: float) -> list[_Point]:
    """The points whose estimated time, taken twice (every point may be retaken), fits the budget:
    the costliest go first (a large model's 2,048-token chunks, its largest decode batches)."""
    points = list(points)
    while points:
        seen: set[int] = set()
        costs = []
        for point in points:  # a context's first decode or mixed point prefills its batch
            batched = point.kind != "prefill"
            costs.append(estimate.point(point, fills=batched and point.context not in seen))
            if batched:
                seen.add(point.context)
        if 2 * sum(costs) <= budget:
            break
        points.pop(costs.index(max(costs)))
    return points


def _kv_blocks(grid: Grid, block_size: int) -> int:
    """Enough blocks for the largest decode batch (its prompts and the tokens it may generate) and a
    prefill beside it, and no more: the cache is zeroed at start, and the machine is shared. The
    prefix cache's blocks of earlier points are evicted as new ones are needed."""
    tokens = grid.token_cap + max(grid.batches) * DECODE_TOKENS + max(grid.chunks) + max(grid.cached)
    return tokens // block_size + 2 * max(grid.batches) + 8


# ---- timing the engine's steps -----------------------------------------------------------


class _StepTimer:
    def __init__(self, core: EngineCore, repeats: int) -> None:
        self.core = core
        self.repeats = repeats
        self.vocab = core.model.config.vocab_size
        self.random = random.Random(0)
        self.count = 0
        self.last_shape: StepShape | None = None
        # The shape of each step as the scheduler chose it, read as the engine's own step runs.
        scheduler = core.scheduler
        schedule = scheduler.schedule

        def shaped_schedule():
            output = schedule()
            self.last_shape = StepShape.of(output)
            return output

        scheduler.schedule = shaped_schedule

    def run(self, points: list[_Point], advance: Callable[..., None]) -> list[Sample]:
        """Every point once, then once more each point during which other processes used more
        CPUs than the engine leaves free; a retake replaces the first take when faster (sharing
        the cores only ever adds time)."""
        self._warm_up(sorted({point.tokens for point in points if point.kind == "prefill"}))
        samples = dict(zip(points, self._takes(points, advance), strict=True))
        spare = max(0, (os.cpu_count() or 1) - torch.get_num_threads())
        retakes = [point for point in points if samples[point].others > spare + RETAKE_OTHERS]
        if retakes:
            advance("retakes", len(retakes))
            for point, retake in zip(retakes, self._takes(retakes, advance, "retake "), strict=True):
                if retake.seconds < samples[point].seconds:
                    samples[point] = retake
        self._abort_all()
        return [samples[point] for point in points]

    def _takes(self, points: list[_Point], advance: Callable[..., None], label: str = "") -> Iterator[Sample]:
        running_context = None
        for point in points:
            if point.kind == "prefill":
                sample = self._prefill(point)
            else:
                if running_context != point.context:  # a batch as large as the context's largest point
                    self._start_batch(point.context, max(p.batch for p in points if p.context == point.context))
                    running_context = point.context
                sample = self._decode(point) if point.kind == "decode" else self._mixed(point)
            advance(label + point.name)
            yield sample

    def _warm_up(self, lengths: list[int]) -> None:
        """One untimed prefill of each chunk length first: the first points would otherwise pay for
        the process's first steps (page faults, oneDNN building its kernels for each new size)."""
        for length in lengths:
            self._add(self._prompt(length), 2)
            self._run_until_idle()

    def _prompt(self, length: int) -> list[int]:
        return [self.random.randrange(self.vocab) for _ in range(length)]

    def _add(self, prompt: list[int], max_tokens: int) -> str:
        self.count += 1
        request_id = f"profile-{self.count}"
        params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
        self.core.add_request(request_id, prompt, params)
        return request_id

    def _timed_step(self) -> tuple[StepShape, float]:
        start = time.perf_counter()
        self.core.step()
        return self.last_shape, time.perf_counter() - start

    def _repeats(self, point: _Point, step: Callable[[], tuple[StepShape, float]]) -> Sample:
        """A warm-up step (a new product size may build a kernel), then the repeats; the median
        step itself (an odd count of repeats), so the shape is the one that took that time."""
        step()
        before, start = _cpu_seconds(), time.perf_counter()
        steps = [step() for _ in range(self.repeats)]
        machine, ours = (after - earlier for after, earlier in zip(_cpu_seconds(), before, strict=True))
        others = max(0.0, (machine - ours) / (time.perf_counter() - start))
        shape, seconds = sorted(steps, key=lambda taken: taken[1])[len(steps) // 2]
        return Sample(point.name, shape, seconds, tuple(seconds for _, seconds in steps), others)

    def _prefill(self, point: _Point) -> Sample:
        """Fresh requests of `context` cached tokens (one shared prefix) and `tokens` new ones,
        one token to generate: each step is exactly that chunk."""
        prefix = self._prompt(point.context)
        if point.context:  # compute the prefix once; its full blocks stay in the prefix cache
            self._add(prefix + self._prompt(1), 1)
            self._run_until_idle()

        def step() -> tuple[StepShape, float]:
            self._add(prefix + self._prompt(point.tokens), 1)
            taken = self._timed_step()
            self._run_until_idle()
            return taken

        return self._repeats(point, step)

    def _start_batch(self, context: int, batch: int) -> None:
        """`batch` requests of `context` prompt tokens, prefilled, each with its first token."""
        self._abort_all()
        for _ in range(batch):
            self._add(self._prompt(context), DECODE_TOKENS)
        while self.core.scheduler.waiting or any(not r.output_token_ids for r in self.core.scheduler.running):
            self.core.step()

    def _decode(self, point: _Point) -> Sample:
        self._shrink_batch(point.batch)
        return self._repeats(point, self._timed_step)

    def _mixed(self, point: _Point) -> Sample:
        self._shrink_batch(point.batch)

        def step() -> tuple[StepShape, float]:
            self._add(self._prompt(point.tokens), 1)
            return self._timed_step()  # the batch's decodes and the new prompt's chunk

        return self._repeats(point, step)

    def _shrink_batch(self, batch: int) -> None:
        """The running batch down to `batch` requests: the newest go (points come largest batch first)."""
        running = self.core.scheduler.running
        if len(running) > batch:
            self.core.abort([request.request_id for request in running[batch:]])

    def _run_until_idle(self) -> None:
        while self.core.has_work():
            self.core.step()

    def _abort_all(self) -> None:
        self.core.abort(list(self.core.scheduler.requests))


def _cpu_seconds() -> tuple[float, float]:
    """CPU seconds the whole machine has been busy (/proc/stat, in clock ticks) and this process
    has run (its threads' schedstat, in nanoseconds); (0, 0) where Linux's files cannot be read."""
    try:
        ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        ours = sum(int((task / "schedstat").read_text().split()[0]) for task in Path("/proc/self/task").iterdir())
    except (OSError, ValueError, IndexError):
        return 0.0, 0.0
    idle = ticks[3] + ticks[4]  # idle and iowait
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK"), ours / 1e9
