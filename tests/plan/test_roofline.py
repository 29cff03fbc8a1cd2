"""The roofline's FLOPs and bytes of one step, worked out by hand."""

from __future__ import annotations

from tokenworks.model.config import ModelConfig
from tokenworks.plan.roofline import attended_keys, chunk_totals, linear_parameters, step_cost
from tokenworks.plan.step import StepShape

# hidden 8, 2 layers, 2 heads and 1 KV head of 4 dims, MLP 16, vocabulary 32, float32 (4 bytes)
CONFIG = ModelConfig(
    vocab_size=32, hidden_size=8, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2,
    num_key_value_heads=1, head_dim=4, dtype="float32",
)  # fmt: skip
# a prefill chunk of 3 after 2 cached, a decode at context 5, and the first 4 tokens of a longer
# prompt (it does not sample): 8 tokens, 2 sampling rows
STEP = StepShape(((3, 2), (1, 5), (4, 0)), samples=2)


def test_one_step_by_hand() -> None:
    # q = 2 x 4 = 8, kv = 1 x 4 = 4; per layer h q + 2 h kv + q h + 3 h I = 64 + 64 + 64 + 384 = 576
    assert linear_parameters(CONFIG) == 2 * 576 == 1152
    # keys seen: chunk (3, 2): 3 + 4 + 5 = 12; decode (1, 5): 6; chunk (4, 0): 1 + 2 + 3 + 4 = 10
    assert [attended_keys(n, c) for n, c in STEP.chunks] == [12, 6, 10]
    # (tokens, keys, K and V rows read): what the cost depends on, summed in one pass
    assert chunk_totals(STEP.chunks) == (8, 28, 15)
    cost = step_cost(CONFIG, STEP)
    assert cost.linear_flops == 2 * 1152 * 8 == 18432
    assert cost.attention_flops == 4 * 4 * 2 * 2 * (12 + 6 + 10) == 1792  # 4 head_dim x heads x layers x keys
    assert cost.lm_head_flops == 2 * 8 * 32 * 2 == 1024  # 2 h V x sampling rows
    assert cost.flops == 18432 + 1792 + 1024
    # layers' weights + the LM head (some row samples) + the 8 tokens' embedding rows, 4 bytes each
    assert cost.weight_bytes == 1152 * 4 + 32 * 8 * 4 + 8 * 8 * 4 == 5888
    # K and V (2) x layers (2) x kv (4) x 4 bytes = 64 bytes a token; read: (2 + 3) + (5 + 1) + (0 + 4) = 15 tokens
    assert cost.kv_read_bytes == 64 * 15 == 960
    assert cost.kv_write_bytes == 64 * 8 == 512
    assert cost.bytes == 5888 + 960 + 512


def test_no_sampling_row_reads_no_lm_head_and_tp_splits_the_work() -> None:
    prefill = StepShape(((4, 0),), samples=0)
    cost = step_cost(CONFIG, prefill)
    assert cost.lm_head_flops == 0
    assert cost.weight_bytes == 1152 * 4 + 4 * 8 * 4
    # an unknown count means every chunk samples
    assert step_cost(CONFIG, StepShape(((4, 0),))).lm_head_flops == 2 * 8 * 32
    # bf16 weights and KV, over 2 GPUs: every term halves but the embedding rows (4 x 8 x 2 bytes)
    split = step_cost(CONFIG, STEP, weight_bytes=2, kv_bytes=2, tp=2)
    assert (split.linear_flops, split.attention_flops, split.lm_head_flops) == (9216, 896, 512)
    assert split.weight_bytes == (1152 * 2 + 32 * 8 * 2) / 2 + 8 * 8 * 2
    assert (split.kv_read_bytes, split.kv_write_bytes) == (32 * 15 / 2, 32 * 8 / 2)


def test_sliding_window_caps_the_keys_and_the_reads() -> None:
    windowed = CONFIG.replace(architecture="MistralForCausalLM", sliding_window=4)
    # chunk (3, 2) with a window of 4: its queries see 3, 4 and 4 keys
    assert attended_keys(3, 2, 4) == 11
    assert attended_keys(2, 10, 4) == 8
    assert attended_keys(3, 0, 4) == 6  # within the window: as without one
    assert chunk_totals(((3, 2), (1, 9)), 4) == (4, 15, 10)
    cost = step_cost(windowed, StepShape(((3, 2), (1, 9)), samples=2))
    assert cost.attention_flops == 4 * 4 * 2 * 2 * (11 + 4)
    assert cost.kv_read_bytes == 64 * ((2 + 3) + (4 + 1))
