"""SFT: exact assistant-only loss mask, packing, bad chat lines, LoRA merge equivalence and export."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tokenworks.model import Tokenizer, load_model
from tokenworks.model.tokenizer import IM_END, IM_START
from tokenworks.train.config import LoopConfig, LoraConfig, OptimConfig, SFTConfig, TrainError
from tokenworks.train.data import IGNORE_INDEX
from tokenworks.train.lora import LoRALinear, apply_lora, load_adapter, merge_lora
from tokenworks.train.sft import merge_adapter, run_sft
from tokenworks.train.sft_data import pack, read_chat_jsonl, targets_of, tokenize_conversation

CONVERSATION = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "What is a list?"},
    {"role": "assistant", "content": "A mutable sequence."},
    {"role": "user", "content": [{"type": "text", "text": "And a tuple?"}]},
    {"role": "assistant", "content": "An immutable one."},
]


def _write_chat(path: Path, count: int = 12) -> Path:
    lines = []
    for i in range(count):
        messages = [
            {"role": "user", "content": f"Name item {i} of the standard library."},
            {"role": "assistant", "content": f"Module number {i} is itertools."},
        ]
        lines.append(json.dumps({"messages": messages}))
    path.write_text("\n".join(lines) + "\n")
    return path


def test_only_assistant_tokens_are_targets(trained_checkpoint: Path) -> None:
    tokenizer = Tokenizer.load(trained_checkpoint)
    example = tokenize_conversation(tokenizer, CONVERSATION)

    # The expected layout, written out by hand: prompt text, then each reply through its end token.
    first_prompt = (
        f"{IM_START}system\nYou are terse.{IM_END}\n{IM_START}user\nWhat is a list?{IM_END}\n{IM_START}assistant\n"
    )
    second_prompt = f"\n{IM_START}user\nAnd a tuple?{IM_END}\n{IM_START}assistant\n"
    pieces = [
        (first_prompt, False),
        (f"A mutable sequence.{IM_END}", True),
        (second_prompt, False),
        (f"An immutable one.{IM_END}", True),
        ("\n", False),
    ]
    expected_ids, expected_positions = [], []
    for text, trainable in pieces:
        ids = tokenizer.encode(text)
        if trainable:
            expected_positions += range(len(expected_ids), len(expected_ids) + len(ids))
        expected_ids += ids
    assert example.ids == expected_ids
    assert [i for i, t in enumerate(example.trainable) if t] == expected_positions
    assert tokenizer.decode(example.ids) == tokenizer.apply_chat_template(CONVERSATION, add_generation_prompt=False)
    im_end = tokenizer.token_to_id(IM_END)
    assert [example.ids[i] for i in expected_positions].count(im_end) == 2  # each reply ends with its end token

    rows = pack([example], context=len(example.ids) + 5, pad_id=tokenizer.pad_token_id)
    inputs, targets = targets_of(rows.ids, rows.target_mask)
    trained = [t for t in range(targets.shape[1]) if targets[0, t] != IGNORE_INDEX]
    assert trained == [p - 1 for p in expected_positions]  # target t is token t + 1
    assert targets[0, trained].tolist() == [example.ids[p] for p in expected_positions]
    assert inputs.shape == targets.shape == (1, len(example.ids) + 5)


def test_packing_keeps_conversations_whole(trained_checkpoint: Path) -> None:
    tokenizer = Tokenizer.load(trained_checkpoint)
    examples = [tokenize_conversation(tokenizer, CONVERSATION[:3]) for _ in range(5)]
    length = len(examples[0].ids)
    rows = pack(examples, context=2 * length + 3, pad_id=tokenizer.pad_token_id)
    assert len(rows) == 3 and rows.truncated == 0  # two per row, the fifth alone
    assert int(rows.target_mask.sum()) == 5 * sum(examples[0].trainable)


def test_bad_chat_lines_are_reported_with_their_numbers(tmp_path: Path) -> None:
    good = json.dumps({"messages": CONVERSATION[1:3]})
    lines = [
        good,
        "{not json",
        json.dumps({"text": "no messages"}),
        json.dumps({"messages": [{"role": "wizard", "content": "hi"}, CONVERSATION[2]]}),
        json.dumps({"messages": [CONVERSATION[1]]}),
        good,
    ]
    path = tmp_path / "chat.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(TrainError) as caught:
        read_chat_jsonl(path)
    message = str(caught.value)
    assert "has 4 invalid line(s)" in message
    assert "line 2: not valid JSON" in message
    assert 'line 3: expected an object with a "messages" list' in message
    assert "line 4: messages[0].role must be one of" in message
    assert "line 5: no assistant message" in message
    assert "line 1:" not in message and "line 6:" not in message


def test_merged_lora_equals_the_unmerged_forward(trained_checkpoint: Path) -> None:
    torch.manual_seed(0)
    model = apply_lora(
        load_model(trained_checkpoint), LoraConfig(rank=4, alpha=8.0, targets=("q_proj", "v_proj", "down_proj"))
    )
    with torch.no_grad():  # B starts at zero; give the adapters something to merge
        for module in model.modules():
            if isinstance(module, LoRALinear):
                module.lora_B.weight.normal_(0.0, 0.05)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in name or ".lora_B." in name for name in trainable)
    ids = torch.randint(0, model.config.vocab_size, (2, 17), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        unmerged = model(ids)
        merged = merge_lora(model)(ids)
        base = load_model(trained_checkpoint)(ids)
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    torch.testing.assert_close(merged, unmerged, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(merged, base, atol=1e-3)  # the adapters did change the function


def _sft_config(base: Path, data: Path, out: Path, **changes) -> SFTConfig:
    loop = LoopConfig(out=out, context=64, batch_size=2, max_steps=3, eval_interval=2, peak_seconds=0.0,
                      optim=OptimConfig(lr=1e-2, warmup_steps=1))  # fmt: skip
    return SFTConfig(base=base, data=data, validation=data, loop=loop, **changes)


def test_lora_sft_saves_an_adapter_and_merges_it(trained_checkpoint: Path, tmp_path: Path) -> None:
    chat = _write_chat(tmp_path / "chat.jsonl")
    lora = LoraConfig(rank=4, alpha=8.0, targets=("q_proj", "v_proj"))
    run = run_sft(_sft_config(trained_checkpoint, chat, tmp_path / "out", lora=lora, merge=True))
    adapter = tmp_path / "out" / "checkpoint"
    assert json.loads((adapter / "adapter_config.json").read_text())["r"] == 4
    tensors = load_file(adapter / "adapter_model.safetensors")
    assert "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight" in tensors
    assert all(".lora_" in name for name in tensors)
    assert run.record["trainable_parameters"] == sum(t.numel() for t in tensors.values())

    ids = torch.randint(0, 500, (1, 12), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        with_adapter = load_adapter(load_model(trained_checkpoint), adapter).eval()(ids)
        merged = load_model(tmp_path / "out" / "merged")(ids)
        remerged = load_model(merge_adapter(adapter, tmp_path / "remerged"))(ids)
        base = load_model(trained_checkpoint)(ids)
    torch.testing.assert_close(merged, with_adapter, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(remerged, merged, atol=0, rtol=0)
    assert not torch.allclose(merged, base, atol=1e-4)


def test_full_sft_loss_falls_on_assistant_tokens(trained_checkpoint: Path, tmp_path: Path) -> None:
    chat = _write_chat(tmp_path / "chat.jsonl")
    run = run_sft(_sft_config(trained_checkpoint, chat, tmp_path / "out", epochs=None))
    evals = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    evals = [r["val_loss"] for r in evals if r["kind"] == "eval"]
    assert evals[-1] < evals[0]
    assert run.record["data"]["target_tokens"] > 0
    assert load_model(tmp_path / "out" / "checkpoint").config.vocab_size == 512


def test_sft_refuses_a_base_whose_tokenizer_exceeds_its_vocabulary(trained_checkpoint: Path, tmp_path: Path) -> None:
    base = tmp_path / "base"
    model = load_model(trained_checkpoint)
    from tokenworks.model import CausalLM, save_model

    small = CausalLM(model.config.replace(vocab_size=300)).init_weights(0)
    save_model(small, base)
    Tokenizer.load(trained_checkpoint).save(base)
    with pytest.raises(TrainError, match="has 512 tokens but the model's vocabulary is only 300"):
        run_sft(_sft_config(base, _write_chat(tmp_path / "chat.jsonl"), tmp_path / "out"))


def test_lora_sft_continues_from_an_init_adapter_with_its_shape(trained_checkpoint: Path, tmp_path: Path) -> None:
    chat = _write_chat(tmp_path / "chat.jsonl")
    first = LoraConfig(rank=4, alpha=8.0, targets=("q_proj", "v_proj"))
    run_sft(_sft_config(trained_checkpoint, chat, tmp_path / "first", lora=first))
    # Asked for another rank and targets: the continuation keeps the adapter's own (it starts from its tensors).
    other = LoraConfig(rank=8, alpha=16.0, targets=("q_proj", "k_proj", "v_proj"))
    run_sft(
        _sft_config(
            trained_checkpoint, chat, tmp_path / "next", lora=other, init_adapter=tmp_path / "first" / "checkpoint"
        )
    )
    config = json.loads((tmp_path / "next" / "checkpoint" / "adapter_config.json").read_text())
    assert (config["r"], sorted(config["target_modules"])) == (4, ["q_proj", "v_proj"])

    def evals(run: str) -> list[float]:
        records = [json.loads(line) for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
        return [r["val_loss"] for r in records if r["kind"] == "eval"]

    # Its first evaluation, before any step, is where the first run ended.
    assert evals("next")[0] == pytest.approx(evals("first")[-1], rel=1e-6)
    with pytest.raises(TrainError, match="needs LoRA"):
        run_sft(
            _sft_config(trained_checkpoint, chat, tmp_path / "full", init_adapter=tmp_path / "first" / "checkpoint")
        )
