"""`plan fleet` on a crafted catalog whose answer is known by hand, and its clear refusals."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tokenworks.bench.slo import SLO
from tokenworks.errors import TokenworksError
from tokenworks.plan.fleet import Forecast, SearchOptions, load_model, plan_fleet
from tokenworks.plan.hardware import FIGURES, Catalog

SMALL = {
    "architectures": ["LlamaForCausalLM"], "hidden_size": 1024, "intermediate_size": 2816,
    "num_attention_heads": 16, "num_key_value_heads": 4, "num_hidden_layers": 12, "vocab_size": 32000,
    "max_position_embeddings": 8192, "torch_dtype": "bfloat16",
}  # fmt: skip
FIGURES_OF = {
    "bf16_tflops": 400, "fp8_tflops": 800, "fp4_tflops": 0, "hbm_gb": 40, "hbm_tbps": 2.0, "nvlink_gbps": 600,
    "nvlink_domain": 8, "tdp_watts": 500, "provisioned_watts": 900,
}  # fmt: skip


def _gpu(name: str, price: float) -> str:
    lines = [f'[[gpu]]\nname = "{name}"']
    for key in FIGURES:
        value = price if key == "usd_per_hour" else FIGURES_OF[key]
        lines.append(f'{key} = {{ value = {value}, source = "test", read = "2026-12-05" }}')
    return "\n".join(lines) + "\n"


@pytest.fixture()
def catalog_file(tmp_path):
    path = tmp_path / "gpus.toml"
    path.write_text(_gpu("Cheap", 2.0) + _gpu("Dear", 4.0), encoding="utf-8")
    return path


@pytest.fixture()
def config_json(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(SMALL), encoding="utf-8")
    return path


def tokenworks(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tokenworks", *args], capture_output=True, text=True, timeout=120)


OPTIONS = SearchOptions(widths=(1, 2), requests=300)


def test_the_same_gpu_at_twice_the_price_loses_at_exactly_twice_the_cost(catalog_file, config_json) -> None:
    catalog = Catalog.load(catalog_file)
    forecast = Forecast(request_rate=400.0, input_tokens="2048", output_tokens="256")
    plan = plan_fleet(load_model(str(config_json)), forecast, SLO.parse("ttft=200ms,tpot=6ms"), catalog,
                      ["Cheap", "Dear"], OPTIONS)  # fmt: skip
    cheap, dear = plan.best["Cheap"], plan.best["Dear"]
    assert plan.overall is cheap
    assert (dear.gpus, dear.layout, dear.tp) == (cheap.gpus, cheap.layout, cheap.tp)  # the same speed: the same fleet
    assert dear.usd_per_million_tokens == pytest.approx(2 * cheap.usd_per_million_tokens, rel=1e-12)
    assert cheap.attainment >= 0.9 and cheap.gpus > 1
    # The fewest: one replica fewer of the same layout does not meet the SLOs.
    fewer = [c for c in plan.tried if c.gpu == "Cheap" and c.layout == cheap.layout and c.tp == cheap.tp
             and c.replicas == cheap.replicas - 1]  # fmt: skip
    assert fewer and not any(c.meets for c in fewer)


def test_slos_no_configuration_meets_name_the_closest(catalog_file, config_json) -> None:
    result = tokenworks("plan", "fleet", str(config_json), "--catalog", str(catalog_file), "--hardware", "Cheap",
                        "--request-rate", "10", "--input-tokens", "512", "--output-tokens", "64", "--slo",
                        "ttft=1us", "--tp", "1", "--requests", "200", "--no-disaggregate")  # fmt: skip
    err = " ".join(result.stderr.split())
    assert result.returncode != 0
    assert "no configuration meets ttft=1us" in err and "the closest: Cheap" in err


def test_unknown_hardware_lists_the_known(catalog_file, config_json) -> None:
    result = tokenworks("plan", "fleet", str(config_json), "--catalog", str(catalog_file), "--hardware", "TPU v9",
                        "--request-rate", "10", "--slo", "ttft=1s")  # fmt: skip
    err = " ".join(result.stderr.split())
    assert result.returncode != 0
    assert "unknown GPU 'TPU v9'" in err and "Cheap" in err and "H100 SXM" in err


def test_a_config_json_that_is_not_one_is_refused(tmp_path) -> None:
    path = tmp_path / "config.json"
    path.write_text("{}", encoding="utf-8")
    with pytest.raises(TokenworksError, match="unsupported architecture"):
        load_model(str(path))


def test_plan_fleet_and_the_fast_mode_import_no_torch() -> None:
    code = (
        "import sys, tokenworks.plan.fleet_cli, tokenworks.plan.fleet, tokenworks.plan.fast, "
        "tokenworks.plan.fast_cli; assert 'torch' not in sys.modules, 'torch was imported'"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
