"""Each flagged request's label: the correction first, then the teacher, then the reference; the
prompt as the user sent it; shuffling deals the same labels out to other prompts."""

from __future__ import annotations

import json

from tokenworks.flywheel.dataset import Record
from tokenworks.flywheel.labels import label_requests, prompt_of, shuffled


class FakeTeacher:
    def __init__(self, answers: dict[str, str]) -> None:
        self.answers = answers

    def answer(self, endpoint: str, request: dict) -> str | None:
        return self.answers.get(request["messages"][-1]["content"])


def row(request_id: str, prompt: str, correction: str | None = None, workload: str | None = "docs-qa") -> dict:
    request = {
        "model": "m",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": prompt}],
    }
    return {
        "request_id": request_id,
        "endpoint": "chat.completions",
        "status": "ok",
        "request_json": json.dumps(request),
        "correction": correction,
        "workload_id": workload,
        "rules": json.dumps(["max_tokens", "correction"]),
    }


def test_the_best_label_wins_and_requests_without_one_are_counted() -> None:
    rows = [
        row("a", "What does `len` do?", correction="Return the length."),
        row("b", "What does `abs` do?", workload=None),
        row("c", "What does  `ABS`  do?"),  # the reference matches by normalised prompt
        row("d", "What does `zip` do?"),
        {**row("e", "x"), "endpoint": "completions", "request_json": json.dumps({"prompt": [1, 2, 3]})},
    ]
    teacher = FakeTeacher({"What does `abs` do?": "Absolute value."})
    labelled = label_requests(rows, {"what does `abs` do?": "Return the absolute value."}, teacher)
    assert labelled.records == [
        Record("What does `len` do?", "Return the length.", "docs-qa", "correction", "a"),
        Record("What does `abs` do?", "Absolute value.", "max_tokens", "teacher", "b"),
        Record("What does  `ABS`  do?", "Return the absolute value.", "docs-qa", "reference", "c"),
    ]
    assert dict(labelled.sources) == {"correction": 1, "teacher": 1, "reference": 1}
    assert (labelled.unlabelled, labelled.no_prompt) == (1, 1)


def test_the_prompt_is_the_last_user_message_or_the_prompt_text() -> None:
    assert prompt_of(row("a", "Hi?")) == "Hi?"
    completion = {"endpoint": "completions", "request_json": json.dumps({"prompt": "A tuple is"})}
    assert prompt_of(completion) == "A tuple is"
    assert prompt_of({"endpoint": "completions", "request_json": json.dumps({"prompt": ["a", "b"]})}) is None


def test_shuffling_keeps_prompts_and_labels_but_not_their_pairs() -> None:
    records = [Record(f"q{i}", f"a{i}", "s", "correction") for i in range(8)]
    dealt = shuffled(records, seed=0)
    assert [r.prompt for r in dealt] == [r.prompt for r in records]
    assert sorted(r.label for r in dealt) == sorted(r.label for r in records)
    assert sum(r.label == f"a{i}" for i, r in enumerate(dealt)) < 4
    assert {r.source for r in dealt} == {"correction, shuffled"}
    assert shuffled(records, seed=0) == dealt
