"""`plan simulate` as a library: a workload at each load level through simulated replicas.

The serving side is given as the engine's own settings (`ReplicaConfig`, defaulting as the live
server does on this host: the profile's block size, a quarter of available memory for the KV
cache) and, with several replicas, the router's policy. Each point runs on a fresh fleet (empty
caches, a router that has learnt nothing), as each `tokenworks bench` point meets a server that
has served only the points before it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from tokenworks.bench.loadgen import LoadOptions
from tokenworks.bench.pareto import pair_label
from tokenworks.bench.sweep import point_label
from tokenworks.bench.workloads import WorkloadOptions, build_workload
from tokenworks.engine.options import available_memory_bytes
from tokenworks.errors import PlanError
from tokenworks.model.config import ModelConfig
from tokenworks.plan.clock import SimClock
from tokenworks.plan.draws import Draws
from tokenworks.plan.host_speed import HostSpeed
from tokenworks.plan.load import Prepared, ReplayLoad, WorkloadLoad
from tokenworks.plan.prompts import SimPrompts
from tokenworks.plan.replica import Replica, ReplicaConfig
from tokenworks.plan.routing import SimRouter, policy_on_clock
from tokenworks.plan.served_log import ServedLogLoad, is_served_log
from tokenworks.plan.simulator import Simulation, SimulationStats
from tokenworks.plan.step import StepLatency
from tokenworks.router.kv_policy import MAX_LOAD_RATIO

CPU_BLOCK_SIZE = 128  # the engine's default on CPU (options.py)
KV_CACHE_FRACTION = 0.25  # of available memory, the engine's default
_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


def replica_config(
    model: ModelConfig, block_size: int = CPU_BLOCK_SIZE, num_kv_blocks: int | None = None,
    kv_cache_memory_gib: float | None = None, max_num_batched_tokens: int = 2048, max_num_seqs: int = 256,
    max_model_len: int | None = None, enable_prefix_caching: bool = True,
) -> ReplicaConfig:  # fmt: skip
    """The scheduling settings EngineCore would take from these options on this host."""
    if num_kv_blocks is None:
        element = _DTYPE_BYTES.get(model.dtype, 4)
        per_block = 2 * model.num_hidden_layers * block_size * model.num_key_value_heads * model.head_dim * element
        memory = (
            int(kv_cache_memory_gib * 2**30)
            if kv_cache_memory_gib is not None
            else int(available_memory_bytes("cpu") * KV_CACHE_FRACTION)
        )
        num_kv_blocks = max(1, memory // per_block)
    length = min(max_model_len or model.max_position_embeddings, num_kv_blocks * block_size)
    return ReplicaConfig(
        num_kv_blocks=num_kv_blocks, block_size=block_size, max_model_len=length,
        max_num_batched_tokens=max_num_batched_tokens, max_num_seqs=max_num_seqs,
        enable_prefix_caching=enable_prefix_caching,
    )  # fmt: skip


def check_fleet(replicas: int, router_policy: str, *delays: float) -> None:
    """PlanError for a fleet that cannot be built (before anything is loaded)."""
    if replicas < 1:
        raise PlanError(f"--replicas must be at least 1, got {replicas}")
    if min(delays, default=0.0) < 0:
        raise PlanError("--arrival-delay-ms, --delivery-delay-ms and the --*-cpu-ms options cannot be negative")
    try:
        policy_on_clock(router_policy, SimClock())
    except ValueError as error:
        raise PlanError(str(error)) from None


@dataclass(slots=True)
class Fleet:
    """What serves: identical replicas and, when there are several, the router's policy."""

    replica: ReplicaConfig
    latency: StepLatency
    replicas: int = 1
    router_policy: str = "kv"
    max_load_ratio: float = MAX_LOAD_RATIO
    arrival_delay: float = 0.0  # seconds from a send to the engine (Simulation's docstring)
    delivery_delay: float = 0.0  # seconds from a step's end to the client reading its tokens
    # Measured per-request times to draw from (calibrate.py): each request's way in, instead of
    # arrival_delay, and the client's time from an answer to its next send. Seconds.
    way_in: tuple[float, ...] = ()
    client_gaps: tuple[float, ...] = ()
    way_in_cpu: float = 0.0  # of each way in, the CPU seconds it costs its replica's core (shared_core.py)
    request_cpu: float = 0.0  # the engine core's CPU seconds a request outside its steps (simulator.py)
    router_cpu: float = 0.0  # CPU seconds a request costs the replicas' cores outside them (simulator.py)
    stream_cpu: float = 0.0  # CPU seconds a sampled token costs the replicas' cores outside them (simulator.py)
    # The host's speed (host_speed.py): factors measured at c=1, each for a window of that many seconds.
    host_speed: tuple[float, ...] = ()
    speed_window: float = 0.0
    seed: int = 0  # of the decks those are drawn from: another seed, other draws of the same times

    @property
    def draws(self) -> bool:
        """Whether anything is drawn (two seeds can simulate differently)."""
        return bool(self.way_in or self.client_gaps or self.host_speed)

    def validate(self) -> None:
        check_fleet(self.replicas, self.router_policy, self.arrival_delay, self.delivery_delay, self.way_in_cpu,
                    self.request_cpu, self.router_cpu, self.stream_cpu)  # fmt: skip

    def build(self) -> Simulation:
        clock = SimClock()
        router = None
        if self.replicas > 1:
            policy = policy_on_clock(self.router_policy, clock, self.max_load_ratio)
            sizes = [self.replica.block_size] * self.replicas
            router = SimRouter(policy, sizes, clock, self.replica.enable_prefix_caching)
        events = router is not None and router.records_kv_events
        # A generator of its own for each deck, seeded alike each build (drawing one never moves
        # another), the seeds of one fleet seed apart from every other's.
        first = self.seed * (self.replicas + 3)
        speeds = [HostSpeed(self.host_speed, self.speed_window, seed=first + 3 + i).factor if self.host_speed
                  else None for i in range(self.replicas)]  # fmt: skip
        replicas = [Replica(self.replica, self.latency, clock, kv_events=events, speed=speed) for speed in speeds]
        way_in = Draws(self.way_in, seed=first + 1) if self.way_in else None
        client_gaps = Draws(self.client_gaps, seed=first + 2) if self.client_gaps else None
        return Simulation(replicas, clock, router, self.arrival_delay, self.delivery_delay, way_in, client_gaps,
                          self.way_in_cpu, self.request_cpu, self.router_cpu, self.stream_cpu)  # fmt: skip


@dataclass(slots=True)
class SimulatedRun:
    label: str
    load: LoadOptions
    records: list
    stats: SimulationStats
    left_out: dict[str, int] = field(default_factory=dict)  # a replayed request log's, by reason


def levels(concurrencies: list[int], rates: list[float] | None) -> list[tuple[int | None, float | None]]:
    """Load levels as `tokenworks bench sweep` takes them (rates: open loop, one concurrency caps them)."""
    if rates:
        cap = concurrencies[0] if len(concurrencies) == 1 else None
        return [(cap, rate) for rate in sorted(rates)]
    return [(concurrency, None) for concurrency in sorted(set(concurrencies))]


def simulate_levels(
    fleet: Fleet, prompts: SimPrompts, workload: WorkloadOptions, base: LoadOptions,
    points: list[tuple[int | None, float | None]], seed: int = 0,
    on_point: Callable[[SimulatedRun], None] | None = None,
) -> list[SimulatedRun]:  # fmt: skip
    fleet.validate()
    workload.validate()
    if workload.output_tokens is None:
        raise PlanError("the simulator needs each request's output length: give --output-tokens")
    pair = pair_label(str(workload.input_tokens), str(workload.output_tokens))
    requests = build_workload(workload, seed, prompts.counter)  # one for every point: it keeps no state
    prepared = None
    if base.num_requests is not None:  # the most any point sends, built and encoded once
        prepared = Prepared(requests, prompts, base.warmup_requests + base.num_requests)
    runs = []
    for concurrency, rate in points:
        load = replace(base, concurrency=concurrency, request_rate=rate)
        simulation = fleet.build()
        driver = WorkloadLoad(requests, load, prompts, prepared)
        run = SimulatedRun(point_label(pair, concurrency, rate), load, driver.records, simulation.run(driver))
        runs.append(run)
        if on_point is not None:
            on_point(run)
    return runs


def simulate_replay(fleet: Fleet, prompts: SimPrompts, log: Path, point: str | None, base: LoadOptions) -> SimulatedRun:
    """A recorded run's requests (a bench requests.jsonl's point, or a server's request log), sent
    again at their recorded times."""
    fleet.validate()
    if is_served_log(log):
        if point is not None:
            raise PlanError("--replay-point names a point of a bench requests.jsonl; a server's request log has none")
        served = ServedLogLoad(log, prompts)
        stats = fleet.build().run(served)
        return SimulatedRun(f"replay of {log.name}", base, served.records, stats, dict(served.skipped))
    driver = ReplayLoad(log, prompts, point)
    stats = fleet.build().run(driver)
    return SimulatedRun(f"replay of {point or log.name}", base, driver.records, stats)
