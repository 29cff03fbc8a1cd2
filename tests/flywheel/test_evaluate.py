"""Evaluation through a real server's prompt logprobs equals the loss computed with the model in
torch (base and adapter alike), and the general loss equals a direct pass over the validation split."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tokenworks.data.shards import TokenShards
from tokenworks.errors import TrainError
from tokenworks.flywheel.dataset import Record
from tokenworks.flywheel.evaluate import EvaluationError, ServedModel, evaluate_served, validation_loss
from tokenworks.model import CausalLM, Tokenizer, preset_config, save_model
from tokenworks.model.checkpoint import load_model
from tokenworks.train.lora import load_adapter
from tokenworks.train.sft import merge_adapter

from ..adapters import make_adapter
from ..engine.conftest import reference_greedy
from ..serve.conftest import MODEL_NAME, start_server

TOLERANCE = 1e-4
ITEMS = [
    Record("What does `str.split` do?", "Return a list of the words in the string.", "docs-qa"),
    Record("What does `json.dumps` do?", "Serialize obj to a JSON formatted str.", "docs-qa"),
    Record("What does `len` do?", "Return the number of items in a container.", "docs-qa"),
]


@pytest.fixture(scope="module")
def ingested(shards_dir: Path) -> Path:
    return shards_dir


@pytest.fixture(scope="module")
def models(ingested, tmp_path_factory) -> dict[str, Path]:
    """A nano checkpoint on the ingest's tokenizer, a LoRA adapter of it, and the two merged."""
    root = tmp_path_factory.mktemp("flywheel-models")
    tokenizer = Tokenizer.load(ingested / "tokenizer")
    config = preset_config("nano", tokenizer.vocab_size, eos_token_id=tokenizer.eos_token_id)
    save_model(CausalLM(config).init_weights(seed=0, std=0.1), root / "base")
    tokenizer.save(root / "base")
    adapter = make_adapter(root / "base", root / "adapter", rank=4, targets=("q_proj", "v_proj"), seed=1)
    return {"base": root / "base", "adapter": adapter, "merged": merge_adapter(adapter, root / "merged", root / "base")}


@pytest.fixture(scope="module")
def server(models):
    running = start_server(models["base"], engine_options={"lora_modules": {"docs": str(models["adapter"])}})
    yield running
    running.stop()


def torch_losses(checkpoint: Path, adapter: Path | None, items: list[Record]) -> list[float]:
    """Mean NLL of each reference given its chat-rendered prompt, straight from the model."""
    tokenizer = Tokenizer.load(checkpoint)
    model = load_model(checkpoint, dtype="float32")
    if adapter is not None:
        load_adapter(model, adapter)
    model.eval()
    losses = []
    with torch.no_grad():
        for item in items:
            prompt = tokenizer.encode_chat([{"role": "user", "content": item.prompt}], add_generation_prompt=True)
            reference = tokenizer.encode(item.label)
            logits = model(torch.tensor([prompt + reference]))[0]
            logprobs = torch.log_softmax(logits.float(), dim=-1)[len(prompt) - 1 : -1]
            losses.append(-logprobs.gather(1, torch.tensor(reference)[:, None]).mean().item())
    return losses


@pytest.mark.parametrize(("served_name", "adapter"), [(MODEL_NAME, None), ("docs", "adapter")])
def test_served_loss_equals_the_models_own(server, models, served_name, adapter) -> None:
    adapter_dir = models[adapter] if adapter else None
    result = evaluate_served(ServedModel(server.url, served_name), ITEMS, batch=2)
    expected = torch_losses(models["base"], adapter_dir, ITEMS)
    assert [item.mean_nll for item in result.items] == pytest.approx(expected, abs=TOLERANCE)
    tokens = [item.reference_tokens for item in result.items]
    overall = sum(loss * count for loss, count in zip(expected, tokens, strict=True)) / sum(tokens)
    assert result.loss == pytest.approx(overall, abs=TOLERANCE)
    # The greedy answer is the model's own greedy continuation of the prompt.
    tokenizer = Tokenizer.load(models["base"])
    checkpoint = models["merged"] if adapter else models["base"]
    for item, score in zip(ITEMS, result.items, strict=True):
        prompt = tokenizer.encode_chat([{"role": "user", "content": item.prompt}], add_generation_prompt=True)
        assert score.prompt_tokens == len(prompt)
        greedy = reference_greedy(checkpoint, [prompt], score.reference_tokens + 8)[0]
        eos = tokenizer.eos_token_id
        expected_text = tokenizer.decode(
            greedy[: greedy.index(eos)] if eos in greedy else greedy, skip_special_tokens=True
        )
        assert score.answer == expected_text and score.exact is False
    assert result.exact_match == 0.0 and result.as_dict()["items"] == 3


def test_an_answer_equal_to_its_reference_is_an_exact_match(server) -> None:
    served = ServedModel(server.url, MODEL_NAME)
    first = evaluate_served(served, ITEMS[:1], answer_slack=0).items[0]
    answer, answer_tokens = first.answer, first.reference_tokens  # greedy, as many tokens as the reference
    own = [Record(ITEMS[0].prompt, answer, "docs-qa")]
    # The answer's text may tokenize to another length (the nano model writes partial UTF-8):
    # a slack that brings the greedy run back to the same tokens gives the same answer, exact.
    retokenized = evaluate_served(served, own, answer_slack=0).items[0].reference_tokens
    exact = evaluate_served(served, own, answer_slack=answer_tokens - retokenized)
    assert (exact.items[0].answer, exact.items[0].exact, exact.exact_match) == (answer, True, 1.0)
    longer = evaluate_served(served, own, answer_slack=answer_tokens - retokenized + 8)
    assert longer.items[0].answer.startswith(answer) and longer.items[0].answer != answer
    assert (longer.items[0].exact, longer.exact_match) == (False, 0.0)


def test_unknown_models_and_servers_are_clear_errors(server) -> None:
    with pytest.raises(EvaluationError, match=r"/tokenize answered 404 for 'nope': .*nope"):
        evaluate_served(ServedModel(server.url, "nope"), ITEMS)
    with pytest.raises(EvaluationError, match=r"cannot reach http://127.0.0.1:9"):
        evaluate_served(ServedModel("http://127.0.0.1:9", MODEL_NAME, timeout=5), ITEMS)
    with pytest.raises(EvaluationError, match=r"no items"):
        evaluate_served(ServedModel(server.url, MODEL_NAME), [])


def direct_validation_loss(checkpoint: Path, data: Path, context: int, max_tokens: int) -> float:
    model = load_model(checkpoint, dtype="float32").eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for array in TokenShards(data, "validation").shard_arrays():
            for start in range(0, len(array) - 1, context):
                if count >= max_tokens:
                    return total / count
                window = torch.tensor(array[start : start + context + 1].astype("int64"))
                if len(window) < 2:
                    continue
                logits = model(window[None, :-1])[0]
                total += F.cross_entropy(logits.float(), window[1:], reduction="sum").item()
                count += len(window) - 1
    return total / count


def test_general_loss_is_the_validation_loss(models, ingested) -> None:
    base = validation_loss(models["base"], ingested, context=64, max_tokens=1024, batch_size=4)
    assert base == pytest.approx(direct_validation_loss(models["base"], ingested, 64, 1024), abs=1e-5)
    # A checkpoint with an adapter scores as the checkpoint it merges into.
    with_adapter = validation_loss(models["base"], ingested, models["adapter"], context=64, max_tokens=1024)
    merged = validation_loss(models["merged"], ingested, context=64, max_tokens=1024)
    assert with_adapter == pytest.approx(merged, abs=1e-5) and with_adapter != pytest.approx(base, abs=1e-3)


def test_general_loss_without_a_validation_split(models, tmp_path) -> None:
    with pytest.raises(TrainError, match=r"manifest.json not found"):
        validation_loss(models["base"], tmp_path)
