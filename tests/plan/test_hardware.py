"""The GPU catalog: every figure with its source, clear errors, and tensor parallelism's cost."""

from __future__ import annotations

import pytest

from tokenworks.errors import PlanError
from tokenworks.model.config import ModelConfig
from tokenworks.plan.hardware import (
    FIGURES,
    GPU,
    Assumptions,
    Catalog,
    Figure,
    allreduce_seconds,
    tensor_parallel_seconds,
)
from tokenworks.plan.latency import ConstantLatency, DatasheetLatency
from tokenworks.plan.roofline import step_cost
from tokenworks.plan.step import StepShape

EXPECTED = ["B200", "GB200 NVL72", "GB300 NVL72", "H100 SXM", "H200 SXM"]


def test_every_gpu_has_every_figure_with_a_source_and_a_date() -> None:
    catalog = Catalog.load()
    assert catalog.names == EXPECTED
    for name in EXPECTED:
        gpu = catalog.gpu(name)
        assert set(gpu.figures) == set(FIGURES)
        for key, figure in gpu.figures.items():
            assert figure.source.strip() and figure.read == "2026-12-05", (name, key)
            assert figure.value > 0 or key == "fp4_tflops", (name, key)
        assert gpu.peak_flops("bf16") >= 989e12 and gpu.hbm_bytes_per_second >= 3.35e12
    assert catalog.gpu("H100 SXM").precisions == ("bf16", "fp8")
    assert catalog.gpu("GB300 NVL72").precisions == ("bf16", "fp8", "fp4")
    assumptions = catalog.assumptions
    assert 0 < assumptions.flops_efficiency <= 1 and 0 < assumptions.bandwidth_efficiency <= 1
    assert "assumption" in assumptions.reasoning


def test_names_match_loosely_and_unknown_ones_are_clear() -> None:
    catalog = Catalog.load()
    assert catalog.gpu("h100").name == catalog.gpu("H100-SXM").name == "H100 SXM"
    assert catalog.gpu("gb200_nvl72").name == "GB200 NVL72"
    with pytest.raises(PlanError, match=r"unknown GPU 'A100'; the catalog has B200, GB200 NVL72"):
        catalog.gpu("A100")
    with pytest.raises(PlanError, match="H100 SXM has no fp4 tensor cores; use one of bf16, fp8"):
        catalog.gpu("H100").peak_flops("fp4")


def test_a_user_catalog_adds_gpus_and_bad_files_say_what_is_wrong(tmp_path) -> None:
    fields = "\n".join(f'{key} = {{ value = 1, source = "my lab", read = "2026-12-01" }}' for key in FIGURES)
    mine = tmp_path / "mine.toml"
    mine.write_text(f'[[gpu]]\nname = "Lab GPU"\n{fields}\n')
    catalog = Catalog.load(mine)
    assert catalog.gpu("lab gpu").figures["tdp_watts"] == Figure(1.0, "my lab", "2026-12-01")
    assert "H100 SXM" in catalog.names
    mine.write_text('[[gpu]]\nname = "Lab GPU"\nbf16_tflops = 5\n')
    with pytest.raises(PlanError, match=r"GPU 'Lab GPU': unknown field|bf16_tflops must be"):
        Catalog.load(mine)
    mine.write_text("[[gpu]\n")
    with pytest.raises(PlanError, match="is not valid TOML"):
        Catalog.load(mine)
    with pytest.raises(PlanError, match="cannot read the hardware catalog"):
        Catalog.load(tmp_path / "absent.toml")


def test_ring_allreduce_cost_grows_with_tp_as_the_formula_says() -> None:
    # 2 (tp - 1) / tp x 1,000 bytes at 100 bytes/s, + 0.5 s of latency
    assert allreduce_seconds(1000, 1, 100, 0.5) == 0
    assert allreduce_seconds(1000, 2, 100, 0.5) == 10.5
    assert allreduce_seconds(1000, 4, 100, 0.5) == 15.5
    assert allreduce_seconds(1000, 8, 100, 0.5) == 18
    # 10 tokens x hidden 10 x 2 bytes = 200 bytes, twice per layer, 3 layers: 6 x (2 x 3/4 x 2 + 0.5)
    assert tensor_parallel_seconds(10, 10, 3, 2, 4, 100, 0.5) == 21


def lab_gpu() -> GPU:
    values = dict.fromkeys(FIGURES, 1.0) | {"bf16_tflops": 1.0, "hbm_tbps": 1.0, "nvlink_gbps": 2.0, "nvlink_domain": 8}
    return GPU("lab", (), {key: Figure(value, "test", "today") for key, value in values.items()})


def test_datasheet_latency_is_the_roofline_plus_overheads_plus_allreduces() -> None:
    config = ModelConfig(
        vocab_size=32, hidden_size=8, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=4,
    )  # fmt: skip
    assumptions = Assumptions(0.5, 0.25, 0.001, 0.0001, 0.00001, "test")
    step = StepShape(((3, 2), (1, 5)), samples=2)
    seconds = {}
    for tp in (1, 2):
        model = DatasheetLatency(lab_gpu(), config, tp=tp, efficiency=assumptions)
        cost = step_cost(config, step, weight_bytes=2, kv_bytes=2, tp=tp)
        # 1 TFLOP/s at half efficiency, 1 TB/s at a quarter; NVLink 1 GB/s a direction
        core = max(cost.flops / 0.5e12, cost.bytes / 0.25e12)
        comm = 0 if tp == 1 else 2 * 2 * (2 * (1 / 2) * (4 * 8 * 2) / 1e9 + 0.00001)
        seconds[tp] = model.step_seconds(step)
        assert seconds[tp] == pytest.approx(core + comm + 0.001 + 2 * 0.0001, rel=1e-12)
    with pytest.raises(PlanError, match="1 to 8 GPUs"):
        DatasheetLatency(lab_gpu(), config, tp=16, efficiency=assumptions)
    with pytest.raises(PlanError, match="does not divide"):
        DatasheetLatency(lab_gpu(), config, tp=4, efficiency=assumptions)


def test_a_real_gpu_decodes_a_llama_8b_step_in_milliseconds() -> None:
    llama = ModelConfig(
        vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, dtype="bfloat16",
    )  # fmt: skip
    h100, b200 = DatasheetLatency("H100", llama), DatasheetLatency("B200", llama)
    decode = StepShape(((1, 1000),) * 8)
    # about 16 GB of weights read at 0.8 x 3.35 TB/s: ~6 ms, plus the assumed overheads
    assert 0.005 < h100.step_seconds(decode) < 0.01
    assert b200.step_seconds(decode) < h100.step_seconds(decode)
    assert DatasheetLatency("H100", llama, tp=2).step_seconds(decode) < h100.step_seconds(decode)
    assert h100.kv_cache_bytes() == pytest.approx(80e9 * 0.9 - 8.03e9 * 2, rel=0.01)
    with pytest.raises(PlanError, match="unknown GPU"):
        DatasheetLatency("TPU v5", llama)


def test_constant_latency() -> None:
    assert ConstantLatency(0.25).step_seconds(StepShape(((5, 0),))) == 0.25
    with pytest.raises(ValueError, match="positive"):
        ConstantLatency(0)
