"""What a run costs in energy: a meter sampled in the background, and tokens per joule from it.

The meter reads the best source it finds, in this order:
  nvml       NVIDIA GPUs through `pynvml`: the total-energy counter where the GPU has one, else power;
  rapl       Linux RAPL package counters under /sys/class/powercap (often readable only by root);
  estimated  host CPU utilisation from /proc/stat times a TDP. This is not a measurement, and every
             figure derived from it is labelled "estimated".
Energy over the run's window comes from the samples: counters are differenced with linear
interpolation at the window's edges; power samples are integrated by the trapezoid rule, with
the power at each edge interpolated between its neighbouring samples.
"""

from __future__ import annotations

import threading
import time
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from tokenworks.bench.metrics import RunMetrics
from tokenworks.errors import BenchError

RAPL_ROOT = Path("/sys/class/powercap")
PROC_STAT = Path("/proc/stat")
Source = Literal["nvml", "rapl", "estimated"]


def integrate_power(times: Sequence[float], watts: Sequence[float], start: float, end: float) -> float:
    """Joules over [start, end] from power samples: trapezoids between samples, the power at each edge
    interpolated linearly between the samples around it. The samples must cover the window."""
    t, w = _series(times, watts, start, end)
    inside = (t > start) & (t < end)
    edge = np.interp([start, end], t, w)
    return float(np.trapezoid(np.r_[edge[0], w[inside], edge[1]], np.r_[start, t[inside], end]))


def energy_between(times: Sequence[float], joules: Sequence[float], start: float, end: float) -> float:
    """Joules over [start, end] from samples of a cumulative energy counter, interpolated at both edges."""
    t, e = _series(times, joules, start, end)
    at_start, at_end = np.interp([start, end], t, e)
    return float(at_end - at_start)


def _series(times: Sequence[float], values: Sequence[float], start: float, end: float) -> tuple[np.ndarray, np.ndarray]:
    t, v = np.asarray(times, dtype=np.float64), np.asarray(values, dtype=np.float64)
    if len(t) != len(v) or len(t) == 0:
        raise ValueError(f"need as many values as times, and at least one; got {len(v)} and {len(t)}")
    if np.any(np.diff(t) < 0):
        raise ValueError("sample times must not decrease")
    if not t[0] <= start <= end <= t[-1]:
        raise ValueError(f"window [{start}, {end}] is not inside the samples' [{t[0]}, {t[-1]}]")
    return t, v


class _Probe(Protocol):
    source: Source
    devices: int  # what is measured: GPUs, CPU packages, or 1 host
    cumulative: bool  # read() gives joules so far (a counter) rather than watts now

    def read(self, now: float) -> float: ...
    def close(self) -> None: ...


class RaplCounter:
    """The summed RAPL package counters, in joules since opening, unwrapped.

    Each `intel-rapl:N` zone is one CPU package; its sub-zones (`intel-rapl:N:M`: cores, uncore,
    DRAM) are parts of it and a `psys` zone covers the whole platform, so both are left out to
    count nothing twice. A counter wraps to zero after `max_energy_range_uj`; read it at least once
    per wrap period (minutes at full power) so a drop means exactly one wrap."""

    source: Source = "rapl"
    cumulative = True

    def __init__(self, domains: list[tuple[Path, int]]) -> None:
        self._domains = domains  # (energy_uj file, its wrap range)
        self._last = [_read_int(path) for path, _ in domains]
        self._total_uj = 0
        self.devices = len(domains)

    @classmethod
    def open(cls, root: Path = RAPL_ROOT) -> RaplCounter | None:
        """None unless every package zone under `root` can be read (since 2020 kernels let only root)."""
        domains = []
        for zone in sorted(root.glob("intel-rapl:*")):
            if zone.name.count(":") != 1:
                continue
            try:
                if not (zone / "name").read_text().strip().startswith("package"):
                    continue
                domains.append((zone / "energy_uj", _read_int(zone / "max_energy_range_uj")))
                _read_int(zone / "energy_uj")
            except (OSError, ValueError):
                return None  # a package we cannot read would leave its energy out
        return cls(domains) if domains else None

    def read(self, now: float) -> float:
        for i, (path, wrap) in enumerate(self._domains):
            raw = _read_int(path)
            delta = raw - self._last[i]
            self._total_uj += delta + wrap if delta < 0 else delta
            self._last[i] = raw
        return self._total_uj / 1e6

    def close(self) -> None:
        pass


def _read_int(path: Path) -> int:
    return int(path.read_text().strip())


class CpuEstimate:
    """Estimated joules so far: for each interval between reads, host CPU busy share (from /proc/stat)
    x TDP x its length. Idle power counts as zero, so this understates what the host draws."""

    source: Source = "estimated"
    cumulative = True
    devices = 1

    def __init__(self, tdp_watts: float, proc_stat: Path = PROC_STAT) -> None:
        self.tdp_watts = tdp_watts
        self._proc_stat = proc_stat
        self._busy = self._total = 0
        self._since: float | None = None  # the time of the last read that saw a clock tick
        self._joules = 0.0

    def utilisation(self) -> float | None:
        """The busy share of all CPUs since the last call that saw time pass; None if none has."""
        busy, total = self._jiffies()
        if total == self._total:
            return None  # less than a clock tick: keep the baseline for the next read
        share = (busy - self._busy) / (total - self._total)
        self._busy, self._total = busy, total
        return share

    def read(self, now: float) -> float:
        """The first read sets the baseline (zero joules at `now`)."""
        share = self.utilisation()
        if self._since is None:
            self._since = now
        elif share is not None:
            self._joules += share * self.tdp_watts * (now - self._since)
            self._since = now
        return self._joules

    def _jiffies(self) -> tuple[int, int]:
        # cpu  user nice system idle iowait irq softirq steal [guest guest_nice: already inside user, nice]
        fields = self._proc_stat.read_text().split("\n", 1)[0].split()
        counts = [int(v) for v in fields[1:9]]
        return sum(counts) - counts[3] - counts[4], sum(counts)

    def close(self) -> None:
        pass


class NvmlProbe:
    """NVIDIA GPUs through NVML: the summed total-energy counters (mJ, Volta and later) where every
    GPU has one, else the summed power draw (mW), which recent GPUs average over about a second.
    All GPUs unless `indices` names the ones serving."""

    source: Source = "nvml"

    def __init__(self, nvml: Any, handles: list[Any], cumulative: bool) -> None:
        self._nvml, self._handles, self.cumulative = nvml, handles, cumulative
        self.devices = len(handles)
        self._base = self._millijoules() if cumulative else 0

    @classmethod
    def open(cls, indices: Sequence[int] | None = None) -> NvmlProbe | None:
        try:
            import pynvml
        except ImportError:
            return None
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError:
            return None  # no driver or no GPU
        try:
            count = pynvml.nvmlDeviceGetCount()
            handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in (range(count) if indices is None else indices)]
            if not handles:
                pynvml.nvmlShutdown()
                return None
            try:
                for handle in handles:
                    pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
                cumulative = True
            except pynvml.NVMLError:
                cumulative = False
            return cls(pynvml, handles, cumulative)
        except pynvml.NVMLError as exc:
            pynvml.nvmlShutdown()
            raise BenchError(f"NVML cannot read GPUs {indices}: {exc}") from exc

    def _millijoules(self) -> int:
        return sum(self._nvml.nvmlDeviceGetTotalEnergyConsumption(h) for h in self._handles)

    def read(self, now: float) -> float:
        if self.cumulative:
            return (self._millijoules() - self._base) / 1e3
        return sum(self._nvml.nvmlDeviceGetPowerUsage(h) for h in self._handles) / 1e3

    def close(self) -> None:
        self._nvml.nvmlShutdown()


@dataclass(slots=True, frozen=True)
class EnergyReading:
    joules: float
    mean_watts: float | None  # joules / window length
    source: Source
    label: Literal["measured", "estimated"]
    devices: int  # GPUs, CPU packages, or 1 host measured
    samples: int  # samples used, the two around the window's edges included
    max_gap_seconds: float  # the longest time between those samples
    interval: float  # the sampling period asked for
    window_start: float
    window_end: float

    def to_json(self) -> dict[str, Any]:
        return {f"energy_{k}": v for k, v in asdict(self).items()}


class EnergyMeter:
    """Samples energy or power every `interval` seconds on a background thread between start() and stop().

    `clock` gives the run's time (the records' clock), so `reading(start, end)` takes the window
    straight from RunMetrics. `tdp_watts` is needed only when nothing can be measured."""

    def __init__(
        self,
        *,
        tdp_watts: float | None = None,
        interval: float = 0.1,
        clock: Callable[[], float] = time.perf_counter,
        nvml: bool = True,
        gpu_indices: Sequence[int] | None = None,
        rapl_root: Path = RAPL_ROOT,
        proc_stat: Path = PROC_STAT,
    ) -> None:
        if interval <= 0:
            raise BenchError(f"energy sampling interval must be above zero, got {interval}")
        self.interval, self._clock = interval, clock
        self._tdp_watts, self._nvml, self._gpu_indices = tdp_watts, nvml, gpu_indices
        self._rapl_root, self._proc_stat = rapl_root, proc_stat
        self._probe: _Probe | None = None
        self._times: list[float] = []
        self._values: list[float] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def source(self) -> Source | None:
        return None if self._probe is None else self._probe.source

    def start(self) -> None:
        if self._probe is not None:
            raise RuntimeError("an EnergyMeter measures one run; make a new one for the next")
        self._probe = self._open_probe()
        self._sample()
        self._thread = threading.Thread(target=self._run, name="energy-meter", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._thread = None
        self._sample()
        self._probe.close()

    def __enter__(self) -> EnergyMeter:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def reading(self, start: float | None = None, end: float | None = None) -> EnergyReading:
        """Energy over [start, end] on the meter's clock (default: everything sampled), after stop()."""
        if self._thread is not None or self._probe is None:
            raise RuntimeError("read the energy meter after start() and stop()")
        times, values = self._times, self._values
        start = times[0] if start is None else start
        end = times[-1] if end is None else end
        joules = (energy_between if self._probe.cumulative else integrate_power)(times, values, start, end)
        first, last = max(bisect_right(times, start) - 1, 0), min(bisect_left(times, end), len(times) - 1)
        used = times[first : last + 1]
        return EnergyReading(
            joules=joules,
            mean_watts=joules / (end - start) if end > start else None,
            source=self._probe.source,
            label="estimated" if self._probe.source == "estimated" else "measured",
            devices=self._probe.devices,
            samples=len(used),
            max_gap_seconds=float(np.diff(used).max()) if len(used) > 1 else 0.0,
            interval=self.interval,
            window_start=start,
            window_end=end,
        )

    def _open_probe(self) -> _Probe:
        probe = (NvmlProbe.open(self._gpu_indices) if self._nvml else None) or RaplCounter.open(self._rapl_root)
        if probe is not None:
            return probe
        if self._tdp_watts is None:
            raise BenchError("no GPU or RAPL energy counter is readable here: give a TDP to estimate energy from")
        return CpuEstimate(self._tdp_watts, self._proc_stat)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self._sample()
            except Exception:  # a failed read leaves a gap, which the validity flags report
                continue

    def _sample(self) -> None:
        now = self._clock()
        value = self._probe.read(now)
        self._times.append(now)
        self._values.append(value)


@dataclass(slots=True, frozen=True)
class EnergyEfficiency:
    """Tokens per unit of energy for one run. `label` says whether the energy was measured or estimated;
    the `provisioned_` figures divide by the hardware's TDP instead of the power drawn."""

    label: Literal["measured", "estimated"]
    joules_per_token: float | None  # input and output tokens
    tokens_per_joule: float | None
    joules_per_output_token: float | None
    output_tokens_per_joule: float | None
    output_tokens_per_second_per_watt: float | None  # output throughput / mean power
    tokens_per_second_per_megawatt: float | None  # total throughput per device * 1e6 / watts per device
    output_tokens_per_second_per_megawatt: float | None
    provisioned_tokens_per_second_per_megawatt: float | None  # per device at its TDP
    provisioned_output_tokens_per_second_per_megawatt: float | None

    def to_json(self) -> dict[str, Any]:
        return {f"energy_{k}": v for k, v in asdict(self).items()}


def energy_efficiency(reading: EnergyReading, metrics: RunMetrics, tdp_watts: float | None = None) -> EnergyEfficiency:
    """Watts per device are the meter's mean power shared over the devices serving (metrics.devices)."""
    tokens = metrics.input_tokens + metrics.output_tokens
    watts_per_device = None if reading.mean_watts is None else reading.mean_watts / metrics.devices
    return EnergyEfficiency(
        label=reading.label,
        joules_per_token=_ratio(reading.joules, tokens),
        tokens_per_joule=_ratio(tokens, reading.joules),
        joules_per_output_token=_ratio(reading.joules, metrics.output_tokens),
        output_tokens_per_joule=_ratio(metrics.output_tokens, reading.joules),
        output_tokens_per_second_per_watt=_ratio(metrics.output_throughput, reading.mean_watts),
        tokens_per_second_per_megawatt=per_megawatt(metrics.total_throughput_per_device, watts_per_device),
        output_tokens_per_second_per_megawatt=per_megawatt(metrics.output_throughput_per_device, watts_per_device),
        provisioned_tokens_per_second_per_megawatt=per_megawatt(metrics.total_throughput_per_device, tdp_watts),
        provisioned_output_tokens_per_second_per_megawatt=per_megawatt(metrics.output_throughput_per_device, tdp_watts),
    )


def per_megawatt(throughput_per_device: float | None, watts_per_device: float | None) -> float | None:
    """Tokens/s per megawatt: throughput_per_device * 1e6 / watts_per_device."""
    ratio = _ratio(throughput_per_device, watts_per_device)
    return None if ratio is None else ratio * 1e6


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    return None if numerator is None or not denominator else numerator / denominator
