"""Flagged requests -> labelled records for the dataset builder.

A flagged request gets the best label there is, in this order: the user's correction (from
/v1/feedback), the teacher's answer (any OpenAI-compatible endpoint, asked greedily), the
workload's reference answer (matched by normalised prompt). A request with none is left out and
counted. The stratum is the request's workload id, else the first rule that flagged it.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from tokenworks.flywheel.dataset import Record, normalize_prompt, read_hard_eval
from tokenworks.flywheel.teacher import Teacher

SOURCES = ("correction", "teacher", "reference")


@dataclass(frozen=True, slots=True)
class Labelled:
    records: list[Record]
    sources: Counter  # labels per source (SOURCES)
    unlabelled: int  # flagged requests with no label from any source
    no_prompt: int  # flagged requests whose prompt is not plain text (token ids, several prompts)


def prompt_of(row: dict) -> str | None:
    """The user's prompt of a logged request: a chat's last user message, or a completion's prompt
    text; None when it is not one plain string."""
    request = json.loads(row["request_json"]) if row.get("request_json") else {}
    if row["endpoint"] == "chat.completions":
        users = [m for m in request.get("messages") or [] if isinstance(m, dict) and m.get("role") == "user"]
        content = users[-1].get("content") if users else None
    else:
        content = request.get("prompt")
    return content if isinstance(content, str) and content.strip() else None


def read_references(paths: Sequence[Path]) -> dict[str, str]:
    """Normalised prompt -> reference, from JSONL files of {prompt, reference, stratum} (the first wins)."""
    references: dict[str, str] = {}
    for path in paths:
        for record in read_hard_eval(path):
            references.setdefault(record.key, record.label)
    return references


def label_requests(rows: Sequence[dict], references: dict[str, str], teacher: Teacher | None = None) -> Labelled:
    records: list[Record] = []
    sources: Counter = Counter()
    unlabelled = no_prompt = 0
    for row in rows:
        prompt = prompt_of(row)
        if prompt is None:
            no_prompt += 1
            continue
        label, source = _label(row, prompt, references, teacher)
        if not label:
            unlabelled += 1
            continue
        sources[source] += 1
        stratum = row.get("workload_id") or json.loads(row["rules"])[0]
        records.append(Record(prompt, label, stratum, source, row["request_id"]))
    return Labelled(records, sources, unlabelled, no_prompt)


def _label(row: dict, prompt: str, references: dict[str, str], teacher: Teacher | None) -> tuple[str, str]:
    if row.get("correction") and row["correction"].strip():
        return row["correction"].strip(), "correction"
    if teacher is not None and row["status"] == "ok":
        answer = teacher.answer(row["endpoint"], json.loads(row["request_json"]))
        if answer and answer.strip():
            return answer.strip(), "teacher"
    return references.get(normalize_prompt(prompt), ""), "reference"


def shuffled(records: Sequence[Record], seed: int) -> list[Record]:
    """The same prompts with the labels dealt out among them at random: a candidate trained on this
    learns answers to the wrong questions, which the gate must refuse."""
    labels = [record.label for record in records]
    random.Random(seed).shuffle(labels)
    return [
        replace(record, label=label, source=f"{record.source}, shuffled")
        for record, label in zip(records, labels, strict=True)
    ]
