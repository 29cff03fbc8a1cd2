"""One measured point: a workload at one load level against one endpoint, with its money and energy.

`measure_point` is the unit every command is made of: `bench run` measures one, `bench sweep`
a series at rising load, `bench capacity` a search over request rates. Around the load it
runs the energy meter, then derives the metrics, the cost per token from the price book, the
energy per token, and the validity flags, and keeps every request record for the report.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tokenworks.bench.client import EndpointInfo, OpenAIClient, probe
from tokenworks.bench.economics import PriceBook, TokenCost, token_cost
from tokenworks.bench.energy import EnergyEfficiency, EnergyMeter, EnergyReading, energy_efficiency
from tokenworks.bench.loadgen import LoadOptions, ProgressCallback, run_load
from tokenworks.bench.metrics import RunMetrics, summarize
from tokenworks.bench.prompts import ModelTokenizer, PromptTokenizer
from tokenworks.bench.records import RequestRecord
from tokenworks.bench.slo import SLO
from tokenworks.bench.validity import Flag, validity_flags
from tokenworks.bench.workloads import WorkloadOptions, build_workload


@dataclass(slots=True)
class Target:
    """The endpoint under test and how to talk to it."""

    url: str
    model: str | None = None  # None: the endpoint's only model
    api_key: str | None = None
    tokenizer: Path | None = None  # the model's tokenizer (a directory or tokenizer.json): exact token counts
    stream: bool = True
    enforce_output_length: bool = True  # ignore_eos + min_tokens, so every request gets its output length


@dataclass(slots=True)
class Accounting:
    """How a run is turned into money and energy: which hardware, how many devices, which prices."""

    hardware: str = "CPU host"  # an entry of the price book
    devices: float = 1.0  # devices serving the endpoint (GPUs; a CPU host counts as one)
    device_label: str = "host"
    price_book: Path | None = None  # None: the packaged book
    energy_interval: float = 0.1  # seconds between energy samples

    def book(self) -> PriceBook:
        return PriceBook.load(self.price_book)


@dataclass(slots=True)
class PointResult:
    label: str
    workload: WorkloadOptions
    load: LoadOptions
    metrics: RunMetrics
    cost: TokenCost
    energy: EnergyReading
    efficiency: EnergyEfficiency
    flags: list[Flag]
    records: list[RequestRecord] = field(repr=False)
    started_at: float = 0.0  # wall clock

    def row(self) -> dict[str, Any]:
        """One flat row of points.csv: what was asked, then every figure."""
        asked = {
            "label": self.label,
            "concurrency": self.load.concurrency,
            "request_rate": self.load.request_rate,
            "input_tokens_asked": str(self.workload.input_tokens),
            "output_tokens_asked": str(self.workload.output_tokens),
        }
        figures = self.metrics.to_json() | self.cost.to_json() | self.energy.to_json() | self.efficiency.to_json()
        return asked | figures | {"flags": ";".join(flag.code for flag in self.flags)}


async def check_endpoint(target: Target) -> EndpointInfo:
    """Fail before the run, with a clear message, when the endpoint is unreachable or the model unknown."""
    info = await probe(target.url, target.api_key, target.model)
    target.model = info.model
    return info


def prompt_tokenizer(target: Target) -> PromptTokenizer | None:
    return ModelTokenizer.load(target.tokenizer) if target.tokenizer is not None else None


async def measure_point(
    target: Target,
    workload_options: WorkloadOptions,
    load: LoadOptions,
    slo: SLO | None,
    accounting: Accounting,
    book: PriceBook,
    label: str,
    seed: int = 0,
    tokenizer: PromptTokenizer | None = None,
    on_progress: ProgressCallback | None = None,
) -> PointResult:
    workload = build_workload(workload_options, seed, tokenizer)
    hardware = book.get(accounting.hardware)
    meter = EnergyMeter(tdp_watts=hardware.tdp_watts * accounting.devices, interval=accounting.energy_interval)
    client = OpenAIClient(
        target.url,
        target.model,
        api_key=target.api_key,
        stream=target.stream,
        enforce_output_length=target.enforce_output_length,
        temperature=workload_options.temperature,
        tokenizer=tokenizer,
    )
    async with client:
        with meter:
            result = await run_load(client, workload, load, on_progress)
    metrics = summarize(result.records, slo, accounting.devices, accounting.device_label)
    # The meter samples on perf_counter; the window is on the run's clock, which starts at `origin`.
    start, end = metrics.window_start, metrics.window_end
    energy = meter.reading(
        None if start is None else result.origin + start, None if end is None else result.origin + end
    )
    return PointResult(
        label=label,
        workload=workload_options,
        load=load,
        metrics=metrics,
        cost=token_cost(book, accounting.hardware, metrics),
        energy=energy,
        efficiency=energy_efficiency(energy, metrics, hardware.tdp_watts),
        flags=validity_flags(result.records, metrics, energy),
        records=result.records,
        started_at=result.started_at,
    )


def host_description() -> dict[str, Any]:
    """The machine the load generator ran on (the endpoint may be elsewhere)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}
