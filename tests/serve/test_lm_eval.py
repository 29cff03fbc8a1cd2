"""lm-evaluation-harness (`lm_eval --model local-completions`) against a live server, on the two
tasks of tests/serve/lm_eval_tasks: every loglikelihood equals transformers' over the served
checkpoint, the accuracy follows from them, and every generation is the server's own greedy one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import openai
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from .conftest import MODEL_NAME

TASKS = Path(__file__).parent / "lm_eval_tasks"
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def lm_eval_run(server, serve_model_dir, tmp_path_factory) -> Path:
    """Both tasks through the lm_eval command line, as a user runs it (from the tasks' directory:
    their data paths are relative); the directory of its results and per-sample logs."""
    out = tmp_path_factory.mktemp("lm-eval")
    model_args = ",".join([
        f"base_url={server.url}/v1/completions", f"model={MODEL_NAME}", f"tokenizer={serve_model_dir}",
        "tokenizer_backend=huggingface", "num_concurrent=1", "max_retries=1", "max_length=256",
    ])  # fmt: skip
    command = [
        sys.executable, "-m", "lm_eval", "--model", "local-completions", "--model_args", model_args,
        "--tasks", "tokenworks_mc,tokenworks_gen", "--include_path", str(TASKS), "--output_path", str(out),
        "--log_samples", "--seed", "0",
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_DATASETS_CACHE": str(out / "cache")}
    done = subprocess.run(command, cwd=TASKS, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out


def _results(out: Path) -> dict:
    (path,) = out.rglob("results_*.json")
    return json.loads(path.read_text())["results"]


def _samples(out: Path, task: str) -> list[dict]:
    (path,) = out.rglob(f"samples_{task}_*.jsonl")
    return [json.loads(line) for line in path.read_text().splitlines()]


def reference_loglikelihood(model, tokenizer, context: str, continuation: str) -> tuple[float, bool]:
    """lm-eval's split of a (context, continuation) pair (trailing spaces of the context move
    to the continuation; the whole is encoded, the context's tokens cut off its start), scored
    by transformers: the continuation's summed logprob and whether greedy decoding gives it."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = tokenizer(context + continuation, add_special_tokens=False).input_ids
    start = len(tokenizer(context, add_special_tokens=False).input_ids)
    with torch.no_grad():
        log_softmax = torch.log_softmax(model(torch.tensor([whole])).logits[0], dim=-1)
    rows = log_softmax[start - 1 : len(whole) - 1]
    targets = torch.tensor(whole[start:])
    return float(rows.gather(1, targets[:, None]).sum()), bool(torch.equal(rows.argmax(dim=-1), targets))


def test_loglikelihoods_and_accuracy_equal_transformers(lm_eval_run, serve_model_dir) -> None:
    model = AutoModelForCausalLM.from_pretrained(serve_model_dir, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(serve_model_dir)
    samples = _samples(lm_eval_run, "tokenworks_mc")
    assert len(samples) == 6
    correct = []
    for sample in samples:
        scores = []
        for index, arguments in enumerate(sample["arguments"].values()):
            (served, greedy), = sample["resps"][index]  # fmt: skip
            expected, expected_greedy = reference_loglikelihood(
                model, tokenizer, arguments["arg_0"], arguments["arg_1"]
            )
            assert float(served) == pytest.approx(expected, abs=TOLERANCE), (sample["doc"], arguments)
            assert (greedy == "True") == expected_greedy
            scores.append(expected)
        correct.append(scores.index(max(scores)) == sample["doc"]["answer"])
        assert sample["acc"] == float(correct[-1])
    assert _results(lm_eval_run)["tokenworks_mc"]["acc,none"] == pytest.approx(sum(correct) / len(correct))


def test_generations_are_the_servers_greedy_ones(lm_eval_run, server) -> None:
    samples = _samples(lm_eval_run, "tokenworks_gen")
    assert len(samples) == 4
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=60) as client:
        for sample in samples:
            prompt = sample["arguments"]["gen_args_0"]["arg_0"]
            answer = client.completions.create(
                model=MODEL_NAME, prompt=prompt, max_tokens=8, temperature=0, stop=["\n"]
            )
            assert sample["resps"] == [[answer.choices[0].text]]
    matches = [sample["resps"][0][0] == sample["target"] for sample in samples]
    assert _results(lm_eval_run)["tokenworks_gen"]["exact_match,none"] == sum(matches) / len(matches)
