"""The factory's plan stage: the rate it plans for, its cost table on a catalog known by hand, the probe's line."""

from __future__ import annotations

import pytest

from tests.plan.test_fleet import SMALL, _gpu
from tokenworks.errors import PlanError
from tokenworks.factory.config import FactoryConfig
from tokenworks.factory.plan_stage import gpu_costs, plan_rows, probe_fleet, served_rate, serving_cpu_text
from tokenworks.factory.report import summary_rows
from tokenworks.factory.server import ServerProcess
from tokenworks.model.config import ModelConfig
from tokenworks.plan.hardware import Catalog


def test_the_rate_planned_for_is_the_highest_served_within_the_slos(tmp_path) -> None:
    points = tmp_path / "points.csv"
    points.write_text(
        "label,request_throughput,slo_attainment\nc=1,2.5,1.0\nc=4,8.0,0.95\nc=16,12.0,0.5\n", encoding="utf-8"
    )
    assert served_rate(points) == 8.0  # c=16 served more, but only half of it within the SLOs
    points.write_text("label,request_throughput,slo_attainment\nc=1,2.5,0.2\nc=4,3.0,0.1\n", encoding="utf-8")
    assert served_rate(points) == 3.0  # none within: the most served
    with pytest.raises(PlanError, match="cannot read the bench stage's points"):
        served_rate(tmp_path / "missing.csv")


def test_the_cost_table_has_a_row_per_gpu_and_prices_the_same_fleet_by_its_price(tmp_path) -> None:
    path = tmp_path / "gpus.toml"
    path.write_text(_gpu("Cheap", 2.0) + _gpu("Dear", 4.0), encoding="utf-8")
    catalog = Catalog.load(path)
    rows = gpu_costs(ModelConfig.from_hf_dict(SMALL), 100.0, "512", "64", "ttft=500ms,tpot=20ms", catalog, 300)
    assert [row["gpu"] for row in rows] == catalog.names  # every GPU of the catalog, packaged ones too
    cheap, dear = (next(row for row in rows if row["gpu"] == name) for name in ("Cheap", "Dear"))
    assert cheap["meets"] and dear["layout"] == cheap["layout"]
    assert dear["usd_per_million_tokens"] == pytest.approx(2 * cheap["usd_per_million_tokens"], rel=1e-12)
    table = dict((row[0], row) for row in plan_rows({"costs": rows}))
    assert table["Cheap"][1] == f"{cheap['layout']} (1 GPU)" and table["Cheap"][4].startswith("$")


def test_the_probes_figures_read_as_one_line_and_the_report_shows_it() -> None:
    fleet = {"way_in_cpu_s": 0.00191, "request_cpu_s": 0.00323, "router_cpu_s": 0.0022, "stream_cpu_s": 0.00022}
    assert serving_cpu_text(fleet) == (
        "serving CPU a request: API server 1.91 ms, router 2.20 ms, engine outside its steps 3.23 ms (not "
        "simulated); a streamed token: router and client 0.22 ms"
    )
    one = {"way_in_cpu_s": 0.00158, "request_cpu_s": 0.00239, "router_cpu_s": 0.0, "stream_cpu_s": 0.0}
    assert serving_cpu_text(one) == (
        "serving CPU a request: API server 1.58 ms, engine outside its steps 2.39 ms (not simulated)"
    )
    plan = {"validation": {"ttft_p50_s": 0.05, "tpot_p50_s": 0.04, "output_throughput": 0.03}, "serving_cpu": fleet}
    rows = dict(summary_rows({"plan": plan}))
    assert rows["plan"] == "simulated against this sweep, median error: TTFT p50 5.0%, TPOT p50 4.0%, output tok/s 3.0%"
    assert rows["plan probe"] == serving_cpu_text(fleet)
    assert "plan probe" not in dict(summary_rows({"plan": plan | {"serving_cpu": None}}))  # an earlier run's


def test_the_probe_wants_the_fleet_running(tmp_path) -> None:
    server = ServerProcess(tmp_path / "checkpoint", "factory-model", tmp_path / "server.log", 0, [])
    with pytest.raises(PlanError, match="the fleet is not running: the plan stage measures serving's CPU on it"):
        probe_fleet(FactoryConfig(), tmp_path, server, "factory-model", tmp_path / "serving-cpu", tmp_path / "p.json")
