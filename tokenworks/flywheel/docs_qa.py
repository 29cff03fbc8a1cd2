"""The docs-QA workload: questions about Python's builtins and stdlib, answered by their own documentation.

Items come from the default corpus's documents (data/python_docs.py), in its order:
- topics (the language reference behind `help()`): a signature line such as
  `str.split(sep=None, maxsplit=-1)`, a blank line, then its indented description;
- module documents: the reader writes each class's and function's docstring as its qualified
  name on a line of its own, then the docstring, blocks joined by a blank line.
Each item asks "What does `NAME` do?" and its reference is the first sentence of that
description. The first item of a name wins; references that are not a plain sentence (a
heading's underline, a code line, a fragment) are skipped, which also drops paragraphs that only
look like a name heading.

The split is by name, on a sha256 of it, so a function stays on its side whatever else the
corpus holds: `train` items are what the flywheel's traffic asks and may learn from; `held_out`
items it never sees, and judge what it learned.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenworks.data.document import Document
from tokenworks.flywheel.dataset import write_jsonl

WORKLOAD_ID = "docs-qa"
WORKLOAD_NAME, TRAIN_NAME, HELD_OUT_NAME = "workload.jsonl", "train.jsonl", "held_out.jsonl"
DEFAULT_HELD_OUT_FRACTION = 0.2
DEFAULT_MAX_TOKENS = 48

_NAME = r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*"
# A topic's signature: a dotted name and its arguments alone on a line, a blank line, an indented paragraph.
_SIGNATURE = re.compile(rf"^ *({_NAME}\.[A-Za-z_]\w*)\(.*\)\n\n((?: +\S.*\n?)+)", re.MULTILINE)
# A module document's block: after a blank line (or at the start), a qualified name alone on a line, then text.
_BLOCK = re.compile(rf"(?:\A|\n\n)({_NAME})\n(\S(?:.|\n(?!\n))*)")
_SENTENCE = re.compile(r"^(.+?[.!?])(?=\s|$)")
# Docstring section headings that stand alone on a line like a name does (numpydoc, Google style).
_HEADINGS = {"Args", "Arguments", "Example", "Examples", "Note", "Notes", "Parameters", "Raises", "Returns",
             "Usage", "Warning", "Warnings", "Yields", "Attributes", "Methods", "See", "Todo"}  # fmt: skip


@dataclass(frozen=True, slots=True)
class QAItem:
    question: str
    reference: str
    function: str  # the qualified name, e.g. "str.split" or "json.dumps"
    split: str  # "train" or "held_out"

    def as_dict(self) -> dict[str, Any]:
        return {"question": self.question, "reference": self.reference, "function": self.function, "split": self.split}


def question_for(function: str) -> str:
    return f"What does `{function}` do?"


def first_sentence(paragraph: str) -> str | None:
    """The paragraph's first sentence, whitespace collapsed, if it reads as one: a capital letter
    first, 3 to 60 words, a full stop last."""
    text = " ".join(paragraph.split())
    match = _SENTENCE.match(text)
    if match is None:
        return None
    sentence = match[1]
    if not sentence[0].isupper() or not sentence.endswith(".") or not 3 <= len(sentence.split()) <= 60:
        return None
    return sentence


def split_of(function: str, held_out_fraction: float = DEFAULT_HELD_OUT_FRACTION) -> str:
    """held_out for the names whose sha256 falls in the first `held_out_fraction` of the range."""
    bucket = int.from_bytes(hashlib.sha256(function.encode()).digest()[:8], "big") / 2**64
    return "held_out" if bucket < held_out_fraction else "train"


def _described(document: Document) -> Iterator[tuple[str, str]]:
    """(qualified name, its description's first paragraph) as the document presents them."""
    if document.id.startswith("topic:"):
        for match in _SIGNATURE.finditer(document.text):
            yield match[1], match[2]
    elif document.id.startswith("module:"):
        module = document.id.removeprefix("module:")
        if any(part.startswith("_") for part in module.split(".")):
            return
        for match in _BLOCK.finditer(document.text):
            name = match[1]
            if name in _HEADINGS or any(part.startswith("_") for part in name.split(".")):
                continue
            yield f"{module}.{name}", match[2]


def docs_qa_items(documents: Iterable[Document], held_out_fraction: float = DEFAULT_HELD_OUT_FRACTION) -> list[QAItem]:
    """One item per documented name, in corpus order."""
    items: list[QAItem] = []
    seen: set[str] = set()
    for document in documents:
        for function, paragraph in _described(document):
            reference = first_sentence(paragraph)
            if reference is None or function in seen:
                continue
            seen.add(function)
            items.append(QAItem(question_for(function), reference, function, split_of(function, held_out_fraction)))
    return items


@dataclass(frozen=True, slots=True)
class WorkloadFiles:
    workload: Path  # what `tokenworks bench run --workload jsonl --input-file` replays: the train questions
    train: Path  # references of the train items (the flywheel may learn from them)
    held_out: Path  # references of the held-out items (the hard-eval set; never traffic)
    train_items: int
    held_out_items: int


def write_docs_qa(items: list[QAItem], out: Path, max_tokens: int = DEFAULT_MAX_TOKENS) -> WorkloadFiles:
    """The bench workload and the two reference files, in the hard-eval format ({prompt, reference, stratum})."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    train = [item for item in items if item.split == "train"]
    held_out = [item for item in items if item.split == "held_out"]
    # bench reads prompt and max_tokens and ignores the rest; the reference rides along for the feedback.
    write_jsonl(
        out / WORKLOAD_NAME,
        (
            {"prompt": i.question, "max_tokens": max_tokens, "reference": i.reference, "function": i.function}
            for i in train
        ),
    )
    for path, chosen in ((out / TRAIN_NAME, train), (out / HELD_OUT_NAME, held_out)):
        write_jsonl(path, (_reference_line(item) for item in chosen))
    return WorkloadFiles(out / WORKLOAD_NAME, out / TRAIN_NAME, out / HELD_OUT_NAME, len(train), len(held_out))


def _reference_line(item: QAItem) -> dict[str, Any]:
    return {"prompt": item.question, "reference": item.reference, "stratum": WORKLOAD_ID, "function": item.function}
