"""LoRA adapters in the engine: each row of a step its own adapter, exactly the merged checkpoint's tokens."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.adapters import ALL_TARGETS, make_adapter
from tests.engine.conftest import SMALL_KV_CACHE, compiled_kernels, random_prompts, reference_greedy
from tokenworks.engine import LLM, SamplingParams
from tokenworks.engine.client import EngineDeadError
from tokenworks.model.adapter import ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME
from tokenworks.train.sft import merge_adapter

TOKENS = 24


@pytest.fixture(scope="module")
def adapters(llama_dir, tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """Two adapters of llama_dir (q/v at rank 4; every projection at rank 8), each with its merged checkpoint."""
    root = tmp_path_factory.mktemp("adapters")
    made = {}
    for name, rank, targets, seed in (("qv", 4, ("q_proj", "v_proj"), 1), ("all", 8, ALL_TARGETS, 2)):
        adapter = make_adapter(llama_dir, root / name, rank, targets, seed)
        made[name] = (adapter, merge_adapter(adapter, root / f"{name}-merged", llama_dir))
    return made


def greedy(tokens: int = TOKENS) -> SamplingParams:
    return SamplingParams(max_tokens=tokens, temperature=0.0, ignore_eos=True)


@pytest.mark.parametrize("kernels", ["auto", "torch"])
def test_mixed_batch_matches_merged_checkpoints(llama_dir, adapters, kernels):
    """Rows of two adapters and of the base in the same steps (prefill and decode): each gives
    the greedy tokens transformers gives on its merged checkpoint (the compiled layers take each
    adapter's rows in tiles of up to 8, prompt rows and decode rows alike; ranks 4 and 8 padded to 16)."""
    if kernels == "auto":
        compiled_kernels()  # they must have built where a compiler exists: else this tests PyTorch twice
    prompts = random_prompts(12, seed=5)
    names = [None, "qv", "all"] * 4
    modules = {name: str(paths[0]) for name, paths in adapters.items()}
    with LLM(llama_dir, multiprocess=False, kernels=kernels, lora_modules=modules, num_kv_blocks=64) as llm:
        outputs = llm.generate(prompts, greedy(), lora=names)
    for name in (None, "qv", "all"):
        rows = [i for i, n in enumerate(names) if n == name]
        checkpoint = llama_dir if name is None else adapters[name][1]
        expected = reference_greedy(checkpoint, [prompts[i] for i in rows], TOKENS)
        assert [outputs[i].token_ids for i in rows] == expected, name
    base = reference_greedy(llama_dir, prompts[1:2], TOKENS)
    assert outputs[1].token_ids != base[0]  # the adapter changes the answer: the check above means something


def test_prefix_cache_is_kept_apart_per_adapter(llama_dir, adapters):
    """The same prompt through the base, then an adapter: nothing of the base's cache is reused
    for the adapter (other keys and values); the adapter's second request reuses its own."""
    prompt = random_prompts(1, seed=9, shared_prefix=40)[0][:40]
    qv = {"qv": str(adapters["qv"][0])}
    with LLM(llama_dir, multiprocess=False, lora_modules=qv, block_size=16, **SMALL_KV_CACHE) as llm:
        base = llm.generate(prompt, greedy(8))[0]
        first = llm.generate(prompt, greedy(8), lora="qv")[0]
        second = llm.generate(prompt, greedy(8), lora="qv")[0]
        again_base = llm.generate(prompt, greedy(8))[0]
    assert (first.num_cached_tokens, second.num_cached_tokens, again_base.num_cached_tokens) == (0, 32, 32)
    expected = reference_greedy(adapters["qv"][1], [prompt], 8)[0]
    assert first.token_ids == second.token_ids == expected
    assert again_base.token_ids == base.token_ids == reference_greedy(llama_dir, [prompt], 8)[0]


def _broken_copy(source: Path, target: Path, edit) -> Path:
    shutil.copytree(source, target)
    tensors = load_file(target / ADAPTER_WEIGHTS_NAME)
    save_file(edit(tensors), target / ADAPTER_WEIGHTS_NAME)
    return target


def test_bad_adapters_are_refused_by_name_and_the_engine_serves_on(llama_dir, adapters, tmp_path):
    from tokenworks.engine.core import EngineCore
    from tokenworks.engine.options import EngineOptions

    core = EngineCore(EngineOptions(llama_dir, num_kv_blocks=16, max_loras=2, max_lora_rank=4))
    good = adapters["qv"][0]
    first = next(iter(load_file(good / ADAPTER_WEIGHTS_NAME)))
    wide = _broken_copy(good, tmp_path / "wide", lambda t: {k: torch.cat([v, v], dim=-1) for k, v in t.items()})
    half = _broken_copy(good, tmp_path / "half", lambda t: {k: v for k, v in t.items() if k != first})
    no_weights = shutil.copytree(good, tmp_path / "no-weights")
    (no_weights / ADAPTER_WEIGHTS_NAME).unlink()
    cases = {
        "wide": (wide, "do not fit this base model"),
        "half": (half, "without lora_"),
        "no-weights": (no_weights, "the adapter has no weights"),
        "missing": (tmp_path / "nowhere", f"nowhere/{ADAPTER_CONFIG_NAME} not found"),
        "big": (adapters["all"][0], "has rank 8, above this server's --max-lora-rank 4"),
    }
    for name, (path, message) in cases.items():
        with pytest.raises(ValueError, match=message):
            core.load_lora(name, str(path))
    assert core.load_lora("qv", str(good)) == {
        "name": "qv", "path": str(good), "rank": 4, "targets": ["q_proj", "v_proj"],
    }  # fmt: skip
    with pytest.raises(ValueError, match="is loaded already"):
        core.load_lora("qv", str(good))
    core.load_lora("qv2", str(good))
    with pytest.raises(ValueError, match="2 adapters are loaded, this server's --max-loras"):
        core.load_lora("qv3", str(good))
    with pytest.raises(ValueError, match="no adapter named 'other'"):
        core.add_request("r", [5, 6, 7], greedy(4), lora="other")
    assert core.list_loras() == {"qv": str(good), "qv2": str(good)}


def test_unloading_an_adapter_in_use_lets_its_requests_finish(llama_dir, adapters):
    from tokenworks.engine.core import EngineCore
    from tokenworks.engine.options import EngineOptions

    path = str(adapters["qv"][0])
    core = EngineCore(EngineOptions(llama_dir, num_kv_blocks=16, lora_modules={"qv": path}))
    prompt = random_prompts(1, seed=3)[0]
    core.add_request("r", prompt, greedy(12), lora="qv")
    tokens = []
    for _ in range(3):
        tokens += [t for output in core.step() for t in output.new_token_ids]
    core.unload_lora("qv")
    with pytest.raises(ValueError, match="no adapter named 'qv'"):
        core.add_request("late", prompt, greedy(4), lora="qv")
    adapter = core.runner.step_layers is not None  # the compiled layers still hold it while the request runs
    while core.has_work():
        tokens += [t for output in core.step() for t in output.new_token_ids]
    assert tokens == reference_greedy(adapters["qv"][1], [prompt], 12)[0]
    assert core.loras.adapters == {}
    if adapter:  # and forget it once the request is done: a step naming its key is an error
        with pytest.raises(RuntimeError, match="no adapter with key 0"):
            core.runner.step_layers.forward(*_one_row_step(core, key=0))
    core.load_lora("qv", path)  # a new load, a new key: the old one's cached blocks never match
    assert core.loras.adapters["qv"].key == 1


def _one_row_step(core, key: int) -> tuple:
    hidden = torch.zeros(1, core.model.config.hidden_size)
    none = torch.empty(0, dtype=torch.long)
    cos = torch.ones(1, core.model.config.head_dim)
    return (hidden, torch.zeros(1, dtype=torch.long), cos, cos, none, none.view(0, 1), none, none, none, none,
            none.view(0, 1), torch.tensor([key]))  # fmt: skip


def test_lora_modules_that_do_not_load_stop_the_start_with_the_reason(llama_dir, tmp_path):
    with pytest.raises(EngineDeadError, match=f"nowhere/{ADAPTER_CONFIG_NAME} not found"):
        LLM(llama_dir, lora_modules={"x": str(tmp_path / "nowhere")}, num_kv_blocks=16)


def test_replacing_an_adapter_in_use_swaps_it_for_new_requests_only(llama_dir, adapters):
    """A hot swap: the name means the new adapter for requests that arrive after it; the
    request running with the old one finishes with the old one's tokens."""
    from tokenworks.engine.core import EngineCore
    from tokenworks.engine.options import EngineOptions

    core = EngineCore(EngineOptions(llama_dir, num_kv_blocks=16, lora_modules={"live": str(adapters["qv"][0])}))
    prompt = random_prompts(1, seed=4)[0]
    core.add_request("old", prompt, greedy(12), lora="live")
    tokens: dict[str, list[int]] = {"old": [], "new": []}

    def step() -> None:
        for output in core.step():
            tokens[output.request_id] += output.new_token_ids

    step()
    step()
    assert core.load_lora("live", str(adapters["all"][0]), replace=True)["rank"] == 8
    core.add_request("new", prompt, greedy(12), lora="live")
    while core.has_work():
        step()
    assert tokens["old"] == reference_greedy(adapters["qv"][1], [prompt], 12)[0]
    assert tokens["new"] == reference_greedy(adapters["all"][1], [prompt], 12)[0]
    assert [adapter.key for adapter in core.loras.adapters.values()] == [1]
