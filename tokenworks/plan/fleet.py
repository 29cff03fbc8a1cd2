"""`plan fleet` as a library: the cheapest fleet per GPU that meets the SLOs at a forecast rate.

For each GPU of the catalog and each tensor-parallel width (1, 2, 4, 8, within its NVLink domain
and dividing the heads), the fast mode (fast.py) with the datasheet latency model finds the
fewest replicas whose requests meet the SLOs: at least `attainment` of them within every bound
(metrics.md's capacity rule), the replicas keeping up with the rate (no saturation flag). Replicas sit behind a
round-robin router, so one replica sees every R-th request of the Poisson forecast: Erlang-R
gaps at rate/R (the bench's gamma arrivals of shape R), and all R replicas alike.

Prefill/decode split (DistServe): P prefill replicas make each first token, the KV cache moves
to one of D decode replicas (its bytes over one direction of NVLink per GPU of the narrower
side, assumed within one NVLink domain), which make the rest. TTFT is the prefill's first token
plus the transfer; TPOT the decode replica's. Each side is sized alone, to sqrt(attainment) of
its own bound, so that both together (taken as independent) reach `attainment`.

At a fixed forecast rate every fleet that keeps up serves the same tokens, so $/Mtok orders
fleets by GPU-hours (bench/economics.py's formula); tokens/s per MW divides by the catalog's
provisioned power per GPU, tokens/J by TDP x the replicas' busy fraction (estimated).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from tokenworks.bench.economics import usd_per_million_tokens
from tokenworks.bench.energy import per_megawatt
from tokenworks.bench.slo import SLO
from tokenworks.bench.validity import Thresholds
from tokenworks.errors import PlanError
from tokenworks.model.config import ModelConfig
from tokenworks.plan.fast import FastEngine, FastRequests, run_replica
from tokenworks.plan.fast_load import FastLoad, Sends
from tokenworks.plan.fast_results import latencies, summarize_fast
from tokenworks.plan.fast_workload import from_lengths
from tokenworks.plan.hardware import GPU, Catalog
from tokenworks.plan.latency import DatasheetLatency
from tokenworks.plan.linear_step import LinearStep


@dataclass(frozen=True, slots=True)
class Forecast:
    request_rate: float  # requests/s, Poisson
    input_tokens: str = "1024"  # as bench takes them: N, LOW:HIGH or normal:MEAN,STD
    output_tokens: str = "256"
    prefix_hit_rate: float = 0.0  # of each prompt, found in the prefix cache


@dataclass(frozen=True, slots=True)
class SearchOptions:
    precision: str = "bf16"
    widths: tuple[int, ...] = (1, 2, 4, 8)
    disaggregate: bool = True
    block_size: int = 16  # vLLM's on GPUs
    max_num_batched_tokens: int = 8192
    max_num_seqs: int = 256
    memory_fraction: float = 0.9  # of HBM for weights and KV cache
    requests: int = 2000  # measured per replica simulated
    attainment: float = 0.9
    max_gpus: int = 4096
    seed: int = 0


@dataclass(slots=True)
class Candidate:
    gpu: str
    layout: str  # "colocated" or "P x tp + D x tp" (disaggregated)
    tp: int  # colocated: the width; disaggregated: the prefill side's
    replicas: int
    gpus: int
    meets: bool
    attainment: float
    ttft_p50: float
    ttft_p90: float
    tpot_p50: float
    output_throughput: float  # the fleet's, tokens/s
    total_throughput: float
    usd_per_million_tokens: float
    usd_per_million_output_tokens: float
    tokens_per_second_per_megawatt: float  # provisioned
    tokens_per_joule: float  # estimated
    memory_bound: bool  # a typical decode step waits on HBM bandwidth (else on FLOP/s)
    decode: tuple[int, int] | None = None  # (tp, replicas) of the decode side

    @property
    def interactivity(self) -> float:
        return 1 / self.tpot_p50 if self.tpot_p50 > 0 else math.inf


@dataclass(slots=True)
class FleetPlan:
    best: dict[str, Candidate]  # per GPU name: the cheapest that meets the SLOs
    closest: dict[str, Candidate]  # per GPU name where none meets: the highest attainment seen
    tried: list[Candidate] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # why some widths were left out

    @property
    def overall(self) -> Candidate | None:
        return min(self.best.values(), key=lambda c: c.usd_per_million_tokens, default=None)


def load_model(path: str) -> ModelConfig:
    """A checkpoint directory or a Hugging Face config.json."""
    import json
    from pathlib import Path

    target = Path(path)
    if target.is_file():
        try:
            return ModelConfig.from_hf_dict(json.loads(target.read_text(encoding="utf-8")))
        except (ValueError, KeyError) as error:
            raise PlanError(f"{path} is not a Hugging Face config.json: {error}") from None
    return ModelConfig.load(target)


def plan_fleet(
    model: ModelConfig, forecast: Forecast, slo: SLO, catalog: Catalog, gpus: list[str] | None = None,
    options: SearchOptions = SearchOptions(),
) -> FleetPlan:  # fmt: skip
    if not forecast.request_rate > 0:
        raise PlanError(f"the forecast's request rate must be above 0, got {forecast.request_rate}")
    chosen = [catalog.gpu(name) for name in gpus] if gpus else [catalog.gpu(name) for name in catalog.names]
    requests = from_lengths(forecast.input_tokens, forecast.output_tokens, options.requests, options.block_size,
                            forecast.prefix_hit_rate, options.seed)  # fmt: skip
    plan = FleetPlan({}, {})
    for gpu in chosen:
        if options.precision not in gpu.precisions:
            plan.skipped.append(f"{gpu.name}: no {options.precision} tensor cores")
            continue
        for width in options.widths:
            latency = _latency(gpu, model, width, catalog, options, plan.skipped)
            if latency is None:
                continue
            engine = _engine(latency, model, options, requests, plan.skipped)
            if engine is None:
                continue
            _keep(plan, _colocated(gpu, latency, engine, requests, forecast, slo, options, plan.tried))
        if options.disaggregate:
            _keep(plan, _disaggregated(gpu, model, catalog, requests, forecast, slo, options, plan.tried))
    return plan


def _keep(plan: FleetPlan, candidate: Candidate | None) -> None:
    if candidate is None:
        return
    if candidate.meets:
        best = plan.best.get(candidate.gpu)
        if best is None or candidate.usd_per_million_tokens < best.usd_per_million_tokens:
            plan.best[candidate.gpu] = candidate
        plan.closest.pop(candidate.gpu, None)
    elif candidate.gpu not in plan.best:
        closest = plan.closest.get(candidate.gpu)
        if closest is None or candidate.attainment > closest.attainment:
            plan.closest[candidate.gpu] = candidate


def _latency(gpu: GPU, model: ModelConfig, width: int, catalog: Catalog, options: SearchOptions, skipped: list[str]):
    if width > gpu.nvlink_domain or model.num_attention_heads % width:
        return None
    try:
        return DatasheetLatency(gpu, model, width, catalog.assumptions, options.precision, catalog=catalog)
    except PlanError as error:
        skipped.append(f"{gpu.name} tp={width}: {error}")
        return None


def _engine(latency: DatasheetLatency, model: ModelConfig, options: SearchOptions, requests: FastRequests,
            skipped: list[str], prefilled: bool = False) -> FastEngine | None:  # fmt: skip
    per_token = 2 * model.num_hidden_layers * model.num_key_value_heads * model.head_dim * latency.kv_bytes / latency.tp
    free = latency.kv_cache_bytes(options.memory_fraction)
    blocks = int(free // (per_token * options.block_size)) if free > 0 else 0
    longest = int(np.max(requests.input_tokens + requests.output_tokens))
    if blocks * options.block_size < longest:
        skipped.append(f"{latency.gpu.name} tp={latency.tp}: the weights leave room for {max(blocks, 0) * options.block_size:,} "
                       f"KV tokens, fewer than the longest request's {longest:,}")  # fmt: skip
        return None
    return FastEngine(blocks, options.block_size, options.max_num_batched_tokens, options.max_num_seqs, prefilled)


def _replica_load(rate: float, replicas: int, options: SearchOptions) -> FastLoad:
    """Every `replicas`-th request of a Poisson stream at `rate`: Erlang gaps (gamma of that shape)."""
    arrival = "poisson" if replicas == 1 else "gamma"
    return FastLoad(options.requests, request_rate=rate / replicas, arrival=arrival, burstiness=float(replicas),
                    seed=options.seed)  # fmt: skip


def _fewest(meets, most: int) -> int | None:
    """The fewest replicas in 1..most for which meets(r) holds (taken as monotone), or None."""
    high = 1
    while not meets(high):
        if high >= most:
            return None
        high = min(high * 2, most)
    low = high // 2  # fails (or 0)
    while high - low > 1:
        middle = (low + high) // 2
        if meets(middle):
            high = middle
        else:
            low = middle
    return high


@dataclass(slots=True)
class _Side:
    """One side's simulation at some replica count: per request latencies, and its totals."""

    replicas: int
    ttft: np.ndarray
    tpot: np.ndarray
    e2e: np.ndarray
    output_throughput: float
    total_throughput: float
    utilisation: float
    keeps_up: bool


def _simulate(engine: FastEngine, step: LinearStep, requests: FastRequests, rate: float, replicas: int,
              options: SearchOptions) -> _Side:  # fmt: skip
    run = run_replica(engine, step, requests, Sends(_replica_load(rate, replicas, options)))
    summary = summarize_fast(run)
    ttft, tpot, e2e, measured = latencies(run)
    if engine.prefilled:  # a decode replica: its E2E is the time after the first token, queueing included
        outputs = requests.output_tokens[measured]
        e2e = e2e[measured]
        tpot = e2e / np.maximum(outputs - 1, 1)
        ttft = np.zeros_like(tpot)
        keeps_up = not _saturated(tpot)  # a queue that grows shows in the time per token after the first
    else:
        ttft, tpot, e2e = ttft[measured], tpot[measured], e2e[measured]
        keeps_up = not _saturated(ttft)
    return _Side(replicas, ttft, tpot, e2e, summary.output_throughput * replicas, summary.total_throughput * replicas,
                 summary.utilisation, keeps_up)  # fmt: skip


def _saturated(latency: np.ndarray, limits: Thresholds = Thresholds()) -> bool:
    """The bench's saturation flag (validity.py): the later half's median TTFT (here, any latency
    that queueing lengthens) at least twice the earlier half's and more than 10 ms above it
    (requests in send order)."""
    half = len(latency) // 2
    early, late = float(np.median(latency[:half])), float(np.median(latency[half:]))
    return late >= limits.saturation_ratio * early and late - early >= limits.saturation_seconds


def _attainment(side: _Side, slo: SLO, ttft_extra: np.ndarray | float = 0.0, check_ttft=True, check_tpot=True) -> float:
    """The share of requests within the SLO's bounds (0 when the replicas fall behind the rate);
    one side of a split checks only its own bound."""
    good = np.ones(len(side.ttft), dtype=bool)
    if check_ttft and slo.ttft is not None:
        good &= side.ttft + ttft_extra <= slo.ttft
    if check_tpot and slo.tpot is not None:
        good &= np.isnan(side.tpot) | (side.tpot <= slo.tpot)
    if check_ttft and check_tpot and slo.e2e is not None:
        good &= side.e2e <= slo.e2e
    return float(good.mean()) if side.keeps_up else 0.0


def _colocated(gpu, latency, engine, requests, forecast, slo, options, tried) -> Candidate:
    step = LinearStep.of(latency)
    sides: dict[int, _Side] = {}

    def side(replicas: int) -> _Side:
        if replicas not in sides:
            sides[replicas] = _simulate(engine, step, requests, forecast.request_rate, replicas, options)
        return sides[replicas]

    def meets(replicas: int) -> bool:
        return _attainment(side(replicas), slo) >= options.attainment

    most = max(1, options.max_gpus // latency.tp)
    fewest = _fewest(meets, most)
    for replicas, result in sorted(sides.items()):
        tried.append(_candidate(gpu, "colocated", latency.tp, replicas, replicas * latency.tp, result, result, slo,
                                options, step, forecast))  # fmt: skip
    if fewest is None:
        return max((c for c in tried if c.gpu == gpu.name and c.tp == latency.tp and c.layout == "colocated"),
                   key=lambda c: c.attainment)  # fmt: skip
    return next(c for c in tried if c.gpu == gpu.name and c.tp == latency.tp and c.replicas == fewest
                and c.layout == "colocated")  # fmt: skip


def _disaggregated(gpu, model, catalog, requests, forecast, slo, options, tried) -> Candidate | None:
    target = math.sqrt(options.attainment)
    prefill_requests = FastRequests(requests.input_tokens, np.ones_like(requests.output_tokens),
                                    requests.cached_tokens)  # fmt: skip
    decode_requests = FastRequests(requests.input_tokens, np.maximum(requests.output_tokens, 2),
                                   requests.cached_tokens)  # fmt: skip
    kv_bytes_per_token = 2 * model.num_hidden_layers * model.num_key_value_heads * model.head_dim
    best_prefill = best_decode = None
    for width in options.widths:
        latency = _latency(gpu, model, width, catalog, options, [])
        if latency is None:
            continue
        step = LinearStep.of(latency)
        transfer = (
            requests.input_tokens[: options.requests]
            * kv_bytes_per_token
            * latency.kv_bytes
            / (width * gpu.nvlink_bytes_per_second)
        )
        most = max(1, options.max_gpus // width)
        prefill = _engine(latency, model, options, prefill_requests, [])
        if prefill is not None:
            found = _fewest(lambda r, e=prefill, s=step, t=transfer: _attainment(
                _simulate(e, s, prefill_requests, forecast.request_rate, r, options), slo, t, check_tpot=False
            ) >= target, most)  # fmt: skip
            if found is not None and (best_prefill is None or found * width < best_prefill[0] * best_prefill[1]):
                best_prefill = (width, found, _simulate(prefill, step, prefill_requests, forecast.request_rate, found,
                                                        options), transfer, step)  # fmt: skip
        decode = _engine(latency, model, options, decode_requests, [], prefilled=True)
        if decode is not None:
            found = _fewest(lambda r, e=decode, s=step: _attainment(
                _simulate(e, s, decode_requests, forecast.request_rate, r, options), slo, check_ttft=False
            ) >= target, most)  # fmt: skip
            if found is not None and (best_decode is None or found * width < best_decode[0] * best_decode[1]):
                best_decode = (width, found, _simulate(decode, step, decode_requests, forecast.request_rate, found,
                                                       options), step)  # fmt: skip
    if best_prefill is None or best_decode is None:
        return None
    (p_width, p_count, p_side, transfer, _p_step), (d_width, d_count, d_side, d_step) = best_prefill, best_decode
    # The same request (index) in both simulations: its TTFT on the prefill side plus the transfer,
    # the rest on the decode side.
    gpus = p_width * p_count + d_width * d_count
    busy = (p_side.utilisation * p_width * p_count + d_side.utilisation * d_width * d_count) / gpus
    ttft = p_side.ttft + transfer[: len(p_side.ttft)]
    joined = _Side(0, ttft, d_side.tpot, ttft + d_side.e2e, d_side.output_throughput, p_side.total_throughput,
                   busy, p_side.keeps_up and d_side.keeps_up)  # fmt: skip
    candidate = _candidate(gpu, f"{p_count} x tp{p_width} + {d_count} x tp{d_width}", p_width, p_count, gpus,
                           joined, d_side, slo, options, d_step, forecast)  # fmt: skip
    candidate.decode = (d_width, d_count)
    tried.append(candidate)
    return candidate


def _candidate(gpu: GPU, layout: str, tp: int, replicas: int, gpus: int, side: _Side, decode_side: _Side, slo: SLO,
               options: SearchOptions, step: LinearStep, forecast: Forecast) -> Candidate:  # fmt: skip
    attainment = _attainment(side, slo)
    price, provisioned, tdp = gpu.figure("usd_per_hour"), gpu.figure("provisioned_watts"), gpu.figure("tdp_watts")
    total = side.total_throughput
    output = decode_side.output_throughput
    tpots = side.tpot[~np.isnan(side.tpot)]
    return Candidate(
        gpu=gpu.name, layout=layout, tp=tp, replicas=replicas, gpus=gpus,
        meets=attainment >= options.attainment, attainment=attainment,
        ttft_p50=float(np.median(side.ttft)), ttft_p90=float(np.percentile(side.ttft, 90)),
        tpot_p50=float(np.median(tpots)) if len(tpots) else 0.0,
        output_throughput=output, total_throughput=total,
        usd_per_million_tokens=usd_per_million_tokens(price, gpus, total) or math.inf,
        usd_per_million_output_tokens=usd_per_million_tokens(price, gpus, output) or math.inf,
        tokens_per_second_per_megawatt=per_megawatt(total / gpus, provisioned) or 0.0,
        tokens_per_joule=total / (gpus * tdp * max(side.utilisation, 1e-9)),
        memory_bound=_memory_bound(step, decode_side, forecast, replicas if decode_side is side else None),
    )  # fmt: skip


def _memory_bound(step: LinearStep, side: _Side, forecast: Forecast, replicas: int | None) -> bool:
    """Whether this fleet's typical decode step is bandwidth-bound (else compute-bound): the
    roofline's two sides at the batch Little's law gives (a replica's rate x the mean decode time)
    with the mean context half-way through the outputs."""
    from tokenworks.bench.workloads import LengthDistribution

    inputs, outputs = (LengthDistribution.parse(x).mean for x in (forecast.input_tokens, forecast.output_tokens))
    decoding = np.nansum(side.tpot) / max(len(side.tpot), 1) * max(outputs - 1, 0)
    batch = max(1, round(forecast.request_rate / max(replicas or side.replicas or 1, 1) * decoding))
    compute, _, memory, _, _ = step.decode_run(batch, batch * (inputs + outputs / 2))
    return memory >= compute
