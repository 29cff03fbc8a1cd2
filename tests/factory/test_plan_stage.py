"""The factory's plan stage: the rate it plans for, and its cost table on a catalog known by hand."""

from __future__ import annotations

import pytest

from tests.plan.test_fleet import SMALL, _gpu
from tokenworks.errors import PlanError
from tokenworks.factory.plan_stage import gpu_costs, plan_rows, served_rate
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
