"""Energy: integration over a window on known samples, the RAPL reader on a fake sysfs tree (wraparound
included), the CPU estimate on a fake /proc/stat, the meter itself, and tokens-per-joule arithmetic."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tokenworks.bench.energy import (
    CpuEstimate,
    EnergyMeter,
    EnergyReading,
    RaplCounter,
    energy_between,
    energy_efficiency,
    integrate_power,
)
from tokenworks.bench.metrics import summarize
from tokenworks.bench.records import RequestRecord
from tokenworks.errors import BenchError


def test_integrate_constant_power_inside_the_samples() -> None:
    times = [float(t) for t in range(11)]
    assert integrate_power(times, [100.0] * 11, 2.5, 7.5) == 500.0
    assert integrate_power(times, [100.0] * 11, 0.0, 10.0) == 1000.0
    assert integrate_power(times, [100.0] * 11, 4.0, 4.0) == 0.0


def test_integrate_a_ramp_exactly() -> None:
    times = [0.0, 1.0, 2.0, 3.0, 4.0]
    assert integrate_power(times, [10 * t for t in times], 0.5, 3.5) == 60.0  # 5 t^2 from 0.5 to 3.5


def test_edges_are_interpolated_between_their_neighbours() -> None:
    # 50 W at t=1 and t=3 (halfway to the 100 W peak): 2 trapezoids of (50 + 100) / 2
    assert integrate_power([0.0, 2.0, 4.0], [0.0, 100.0, 0.0], 1.0, 3.0) == 150.0
    # uneven samples: 10 W until 0.1 s, a ramp to 30 W at 0.5 s; 0.5 + 8 + 1.5 joules
    assert integrate_power([0.0, 0.1, 0.5, 0.6], [10.0, 10.0, 30.0, 30.0], 0.05, 0.55) == pytest.approx(10.0)


def test_counter_differences_are_interpolated_at_the_edges() -> None:
    assert energy_between([0.0, 1.0, 2.0], [0.0, 5.0, 15.0], 0.5, 1.5) == 7.5
    assert energy_between([0.0, 1.0, 2.0], [0.0, 5.0, 15.0], 0.0, 2.0) == 15.0


def test_windows_and_samples_are_checked() -> None:
    with pytest.raises(ValueError, match="not inside the samples"):
        integrate_power([0.0, 1.0], [5.0, 5.0], 0.5, 1.5)
    with pytest.raises(ValueError, match="must not decrease"):
        integrate_power([0.0, 2.0, 1.0], [5.0, 5.0, 5.0], 0.5, 1.0)
    with pytest.raises(ValueError, match="as many values as times"):
        energy_between([0.0, 1.0], [5.0], 0.0, 1.0)


def write(path: Path, text: str) -> None:
    """Replace a file atomically, as the kernel's counters never read half-written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_suffix(".tmp").write_text(text)
    os.replace(path.with_suffix(".tmp"), path)


def fake_rapl(root: Path, energy_uj: dict[str, int], wrap: int = 1_000_000) -> None:
    names = {"intel-rapl:0": "package-0", "intel-rapl:1": "package-1", "intel-rapl:0:0": "core"}
    names |= {"intel-rapl:2": "psys", "intel-rapl-mmio:0": "package-0"}
    for zone, value in energy_uj.items():
        write(root / zone / "name", names[zone] + "\n")
        write(root / zone / "max_energy_range_uj", f"{wrap}\n")
        write(root / zone / "energy_uj", f"{value}\n")


def set_energy(root: Path, **values: int) -> None:
    for zone, value in values.items():
        write(root / zone.replace("_", ":").replace("rapl", "intel-rapl") / "energy_uj", f"{value}\n")


def test_rapl_sums_packages_and_unwraps(tmp_path: Path) -> None:
    # sub-zones (cores), psys and the MMIO zone would count the packages' energy twice
    zones = {"intel-rapl:0": 1000, "intel-rapl:1": 990_000, "intel-rapl:0:0": 5, "intel-rapl:2": 7}
    fake_rapl(tmp_path, zones | {"intel-rapl-mmio:0": 9})
    counter = RaplCounter.open(tmp_path)
    assert counter is not None and counter.devices == 2
    assert counter.read(0.0) == 0.0
    set_energy(tmp_path, rapl_0=3_001_000, rapl_1=10_000, rapl_0_0=10**9, rapl_2=10**9)  # package 1 wrapped
    assert counter.read(1.0) == 3.02  # 3 J + (10_000 - 990_000 + 1_000_000) uJ
    set_energy(tmp_path, rapl_0=4_001_000, rapl_1=30_000)
    assert counter.read(2.0) == 4.04


def test_rapl_unreadable_or_absent(tmp_path: Path) -> None:
    assert RaplCounter.open(tmp_path) is None  # no zones
    fake_rapl(tmp_path, {"intel-rapl:0": 1000, "intel-rapl:1": 2000})
    energy = tmp_path / "intel-rapl:1" / "energy_uj"
    energy.unlink()
    energy.mkdir()  # unreadable even by root, like a root-only file to anyone else
    assert RaplCounter.open(tmp_path) is None  # a package we cannot read: no partial measurement


def test_cpu_estimate_from_proc_stat(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    write(stat, "cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 1 2 3\n")  # busy 150 of 1000 jiffies
    estimate = CpuEstimate(tdp_watts=10.0, proc_stat=stat)
    assert estimate.read(0.0) == 0.0  # the baseline
    write(stat, "cpu  200 0 100 1100 100 0 0 0 77 77\n")  # +150 busy of +500 (guest is inside user)
    assert estimate.read(2.0) == pytest.approx(0.3 * 10 * 2)
    assert estimate.read(3.0) == pytest.approx(6.0)  # no tick has passed: the interval carries on
    write(stat, "cpu  250 0 100 1150 100 0 0 0 77 77\n")  # +50 busy of +100, over the 2 s since t=2
    assert estimate.read(4.0) == pytest.approx(6.0 + 0.5 * 10 * 2)


def test_meter_on_rapl_counters(tmp_path: Path) -> None:
    fake_rapl(tmp_path, {"intel-rapl:0": 1000})
    meter = EnergyMeter(interval=0.01, nvml=False, rapl_root=tmp_path, tdp_watts=5.0)
    with meter:
        assert meter.source == "rapl"
        set_energy(tmp_path, rapl_0=501_000)
        time.sleep(0.1)
        set_energy(tmp_path, rapl_0=2_001_000)
    reading = meter.reading()
    assert (reading.joules, reading.source, reading.label, reading.devices) == (2.0, "rapl", "measured", 1)
    assert reading.mean_watts == 2.0 / (reading.window_end - reading.window_start)
    assert reading.samples >= 3 and reading.max_gap_seconds > 0
    with pytest.raises(ValueError, match="not inside the samples"):
        meter.reading(reading.window_start - 1, reading.window_end)


def test_meter_estimates_when_nothing_is_measurable(tmp_path: Path) -> None:
    meter = EnergyMeter(interval=0.02, nvml=False, rapl_root=tmp_path, tdp_watts=10.0)
    meter.start()
    deadline = time.perf_counter() + 0.3
    while time.perf_counter() < deadline:  # keep a CPU busy so utilisation is above zero
        pass
    meter.stop()
    reading = meter.reading()
    assert (reading.source, reading.label) == ("estimated", "estimated")
    assert 0 < reading.joules <= 10.0 * (reading.window_end - reading.window_start) + 1e-9
    with pytest.raises(BenchError, match="give a TDP to estimate energy from"):
        EnergyMeter(nvml=False, rapl_root=tmp_path).start()


def test_tokens_per_joule_and_per_megawatt() -> None:
    # a 2 s window: 300 input + 100 output tokens on 2 devices; 100 J at a mean 50 W (25 W per device)
    record = RequestRecord(0, False, None, 0.0, 1.0, 2.0, [1.0, 2.0], [50, 50], 300, 100, "usage")
    metrics = summarize([record], devices=2)
    reading = EnergyReading(100.0, 50.0, "rapl", "measured", 1, 21, 0.1, 0.1, 0.0, 2.0)
    e = energy_efficiency(reading, metrics, tdp_watts=700.0)
    assert (e.label, e.joules_per_token, e.tokens_per_joule) == ("measured", 0.25, 4.0)
    assert (e.joules_per_output_token, e.output_tokens_per_joule, e.output_tokens_per_second_per_watt) == (1, 1, 1)
    assert e.tokens_per_second_per_megawatt == 100 * 1e6 / 25  # 200 tok/s over 2 devices, 25 W each
    assert e.output_tokens_per_second_per_megawatt == 25 * 1e6 / 25
    assert e.provisioned_tokens_per_second_per_megawatt == pytest.approx(100 * 1e6 / 700)
    assert e.provisioned_output_tokens_per_second_per_megawatt == pytest.approx(25 * 1e6 / 700)
    estimated = EnergyReading(100.0, 50.0, "estimated", "estimated", 1, 21, 0.1, 0.1, 0.0, 2.0)
    data = energy_efficiency(estimated, metrics).to_json()
    assert data["energy_label"] == "estimated" and data["energy_provisioned_tokens_per_second_per_megawatt"] is None
    assert estimated.to_json()["energy_source"] == "estimated"
