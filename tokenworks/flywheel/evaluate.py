"""Evaluation of a candidate and a champion, the same way for both.

Hard-eval, through the server: any served model (the base, or an adapter by its name) is scored
by its own endpoint, so the flywheel never loads a second copy of a model to judge it. Per item,
the prompt (rendered with the chat template, as users send it) and the reference are tokenized
by the server's /tokenize, one segment at a time as `train sft` tokenizes them; one completions
call with the ids of both, `echo` and `max_tokens` 0 returns every position's logprob, and the
reference's are its loss. A second, greedy call answers the prompt alone for exact match.

General, in torch: the loss on the pretraining validation split, computed by the training
loop's own evaluation over the same windows, so the figure is the one `tokenworks train`
reports. Only this part imports torch, inside the function.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tokenworks.errors import TokenworksError
from tokenworks.flywheel.dataset import Record
from tokenworks.flywheel.store import EVALUATION_WORKLOAD

DEFAULT_BATCH = 8
ANSWER_SLACK = 8  # greedy tokens beyond the reference's length, so a longer answer shows as wrong


class EvaluationError(TokenworksError):
    """A model cannot be evaluated as asked: an unreachable server, an unknown model, no validation split."""


@dataclass(frozen=True, slots=True)
class ItemScore:
    prompt_tokens: int
    reference_tokens: int
    nll: float  # summed over the reference tokens
    answer: str
    exact: bool

    @property
    def mean_nll(self) -> float:
        return self.nll / self.reference_tokens


@dataclass(frozen=True, slots=True)
class ServedEvaluation:
    model: str
    loss: float  # mean negative log-likelihood per reference token, over all items
    exact_match: float  # share of items whose greedy answer is the reference (whitespace aside)
    items: list[ItemScore] = field(repr=False)

    def as_dict(self) -> dict[str, Any]:
        tokens = sum(item.reference_tokens for item in self.items)
        return {"model": self.model, "loss": self.loss, "exact_match": self.exact_match, "items": len(self.items),
                "reference_tokens": tokens}  # fmt: skip


class ServedModel:
    """A model behind an OpenAI-compatible tokenworks (or vLLM) server."""

    def __init__(self, url: str, model: str, api_key: str | None = None, timeout: float = 300.0) -> None:
        self.url, self.model, self.api_key, self.timeout = url.rstrip("/"), model, api_key, timeout

    def post(self, route: str, body: dict[str, Any]) -> dict[str, Any]:
        # Tagged so the flywheel never collects its own judging as traffic to learn from.
        headers = {"Content-Type": "application/json", "X-Workload-ID": EVALUATION_WORKLOAD}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(self.url + route, json.dumps(body).encode(), headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:
            raise EvaluationError(
                f"{self.url}{route} answered {error.code} for {self.model!r}: {_message(error)}"
            ) from None
        except (urllib.error.URLError, OSError) as error:
            raise EvaluationError(f"cannot reach {self.url}: {error}") from None

    def tokenize(self, text: str, chat: bool = False) -> list[int]:
        body: dict[str, Any] = {"model": self.model}
        if chat:
            body.update(messages=[{"role": "user", "content": text}], add_generation_prompt=True)
        else:
            body["prompt"] = text
        return self.post("/tokenize", body)["tokens"]

    def completions(self, prompts: list[list[int]], **options: Any) -> list[dict[str, Any]]:
        """The choices for a batch of token-id prompts, in prompt order."""
        answer = self.post("/v1/completions", {"model": self.model, "prompt": prompts, "temperature": 0, **options})
        return sorted(answer["choices"], key=lambda choice: choice["index"])


def _message(error: urllib.error.HTTPError) -> str:
    try:
        return json.loads(error.read())["error"]["message"]
    except (ValueError, KeyError, TypeError, OSError):
        return error.reason


def _normalized(text: str) -> str:
    return " ".join(text.split())


def evaluate_served(
    served: ServedModel,
    items: Sequence[Record],
    chat: bool = True,
    batch: int = DEFAULT_BATCH,
    answer_slack: int = ANSWER_SLACK,
) -> ServedEvaluation:
    """Reference loss and exact match of the served model on (prompt, label) items; a greedy answer
    may run `answer_slack` tokens past its reference's length (where it shows as not exact)."""
    if not items:
        raise EvaluationError("there are no items to evaluate on")
    scores: list[ItemScore] = []
    for start in range(0, len(items), batch):
        chunk = items[start : start + batch]
        prompts = [served.tokenize(item.prompt, chat) for item in chunk]
        references = [served.tokenize(item.label) for item in chunk]
        if any(not reference for reference in references):
            raise EvaluationError("an item's reference has no tokens: every label must be non-empty text")
        scored = served.completions(
            [p + r for p, r in zip(prompts, references, strict=True)], max_tokens=0, echo=True, logprobs=0
        )
        # One call per answer: each item's own length limit, so an answer is judged on its own tokens.
        answers = [
            served.completions([p], max_tokens=len(r) + answer_slack)[0]
            for p, r in zip(prompts, references, strict=True)
        ]
        for item, prompt, reference, score, answer in zip(chunk, prompts, references, scored, answers, strict=True):
            logprobs = score["logprobs"]["token_logprobs"][len(prompt) :]
            exact = _normalized(answer["text"]) == _normalized(item.label)
            scores.append(ItemScore(len(prompt), len(reference), -sum(logprobs), answer["text"], exact))
    loss = sum(s.nll for s in scores) / sum(s.reference_tokens for s in scores)
    return ServedEvaluation(served.model, loss, sum(s.exact for s in scores) / len(scores), scores)


def validation_loss(
    checkpoint: Path,
    data: Path,
    adapter: Path | None = None,
    *,
    context: int = 256,
    max_tokens: int = 65536,
    batch_size: int = 8,
    device: str = "cpu",
) -> float:
    """Mean loss per token on the first `max_tokens` of an ingest output's validation split, in float32,
    of a checkpoint or of a checkpoint with a LoRA adapter."""
    import torch

    from tokenworks.model.checkpoint import load_model
    from tokenworks.train.data import check_token_range, open_shards, validation_windows
    from tokenworks.train.distributed import DistInfo
    from tokenworks.train.loop import evaluate
    from tokenworks.train.lora import load_adapter
    from tokenworks.train.session import batch_windows

    shards = open_shards(Path(data))
    if shards.validation is None:
        raise EvaluationError(f"{data} has no validation split to measure the general loss on")
    model = load_model(checkpoint, dtype="float32", device=device)
    check_token_range(shards, model.config.vocab_size)
    if adapter is not None:
        load_adapter(model, Path(adapter))
    context = min(context, model.config.max_position_embeddings)
    windows = batch_windows(validation_windows(shards.validation, context, max_tokens), batch_size)
    return evaluate(model, windows, torch.device(device), "float32", DistInfo())
