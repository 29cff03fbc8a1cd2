"""The dataset builder: dedup, stratified splits with exact counts, a frozen hard-eval set that
survives later builds, SFT files `train sft` reads, a manifest of hashes, and bad input named by line."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from tokenworks.flywheel.dataset import DatasetError, Record, build_dataset, dedup, read_records, stratified_take
from tokenworks.train.sft_data import read_chat_jsonl


def records(stratum: str, count: int, start: int = 0) -> list[Record]:
    return [Record(f"Question {i} about {stratum}?", f"Answer {i}.", stratum) for i in range(start, start + count)]


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_dedup_keeps_the_first_of_each_normalised_prompt() -> None:
    kept = dedup([
        Record("What does  `str.split` do?", "first", "a"),
        Record("what does `str.split` do?\n", "second", "b"),
        Record("What does `str.join` do?", "third", "a"),
        Record("ｗhat does `str.join` do?", "fourth", "a"),  # a full-width w: the same under NFKC
    ])  # fmt: skip
    assert [r.label for r in kept] == ["first", "third"]


def test_stratified_take_counts_per_stratum() -> None:
    pool = records("low_logprob", 25) + records("correction", 10) + records("max_tokens", 5)
    taken, rest = stratified_take(pool, 0.1, "validation")
    # round half up per stratum: 2.5 -> 3, 1.0 -> 1, 0.5 -> 1
    assert [sum(r.stratum == s for r in taken) for s in ("low_logprob", "correction", "max_tokens")] == [3, 1, 1]
    assert len(rest) == 35 and {r.key for r in taken}.isdisjoint(r.key for r in rest)
    # Input order does not decide who is taken.
    again, _ = stratified_take(list(reversed(pool)), 0.1, "validation")
    assert {r.key for r in again} == {r.key for r in taken}


def test_build_and_rebuild_keep_the_frozen_hard_eval_set(tmp_path) -> None:
    first = records("correction", 40) + records("teacher", 20) + records("correction", 3)  # 3 repeats
    hard_eval = tmp_path / "frozen" / "hard_eval.jsonl"
    result = build_dataset(first, tmp_path / "build1", hard_eval, validation_fraction=0.1, hard_eval_fraction=0.2)
    assert (result.train, result.validation, result.hard_eval, result.duplicates, result.held_for_eval) == (
        43, 5, 12, 3, 0,
    )  # fmt: skip
    # 60 unique: hard-eval 8 + 4; of the 32 + 16 left, validation 3 (3.2) + 2 (1.6), train 29 + 14.
    frozen = lines(hard_eval)
    assert len(frozen) == 12 and set(frozen[0]) == {"prompt", "reference", "stratum", "id"}
    assert sum(item["stratum"] == "teacher" for item in frozen) == 4
    train = read_chat_jsonl(tmp_path / "build1" / "train.jsonl")  # what `tokenworks train sft` reads
    assert len(train) == 43 and [m["role"] for m in train[0]] == ["user", "assistant"]
    frozen_prompts = {item["prompt"] for item in frozen}
    assert frozen_prompts.isdisjoint(c[0]["content"] for c in train)
    manifest = json.loads(result.manifest.read_text())
    assert manifest["strata"] == {
        "correction": {"train": 29, "validation": 3},
        "teacher": {"train": 14, "validation": 2},
    }
    for output in manifest["outputs"]:
        assert output["sha256"] == hashlib.sha256(Path(output["path"]).read_bytes()).hexdigest()
    assert [Path(o["path"]).name for o in manifest["outputs"]] == ["train.jsonl", "validation.jsonl", "hard_eval.jsonl"]

    # A later build on more records reuses the frozen set as written, and trains on none of its prompts.
    frozen_bytes = hard_eval.read_bytes()
    second = build_dataset(first + records("teacher", 10, start=20), tmp_path / "build2", hard_eval)
    assert hard_eval.read_bytes() == frozen_bytes
    assert (second.hard_eval, second.held_for_eval, second.duplicates) == (12, 12, 3)
    # 70 unique - 12 frozen = 58: correction 32 -> validation 3, teacher 26 -> validation 3 (2.6).
    assert (second.train, second.validation) == (52, 6)
    rebuilt = read_chat_jsonl(tmp_path / "build2" / "train.jsonl")
    assert frozen_prompts.isdisjoint(c[0]["content"] for c in rebuilt)


def test_builds_are_deterministic(tmp_path) -> None:
    pool = records("a", 30) + records("b", 12)
    build_dataset(pool, tmp_path / "one", tmp_path / "one.jsonl")
    build_dataset(list(reversed(pool)), tmp_path / "two", tmp_path / "two.jsonl")
    assert sorted(lines(tmp_path / "one.jsonl"), key=str) == sorted(lines(tmp_path / "two.jsonl"), key=str)
    assert sorted(lines(tmp_path / "one" / "train.jsonl"), key=str) == sorted(
        lines(tmp_path / "two" / "train.jsonl"), key=str
    )


def test_a_corrupt_records_file_names_the_line(tmp_path) -> None:
    path = tmp_path / "records.jsonl"
    good = json.dumps({"prompt": "p", "label": "l", "stratum": "s"})
    for bad, message in [
        ('{"prompt": "p", "label": "l"', "line 2: not valid JSON"),
        (json.dumps({"prompt": "p", "stratum": "s"}), 'line 2: "label" must be a non-empty string'),
        (json.dumps({"prompt": "p", "label": "", "stratum": "s"}), 'line 2: "label" must be a non-empty string'),
        ("[1, 2]", "line 2: expected a JSON object with prompt, label, stratum, got a list"),
    ]:
        path.write_text(f"{good}\n{bad}\n{good}\n")
        with pytest.raises(DatasetError, match=f"records.jsonl, {message}"):
            read_records(path)
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(DatasetError, match=r"cannot read the records"):
        read_records(path)
    path.write_text(f"{good}\n\n{good}\n")
    assert len(read_records(path)) == 2


def test_a_corrupt_frozen_set_is_an_error_not_a_new_one(tmp_path) -> None:
    hard_eval = tmp_path / "hard_eval.jsonl"
    hard_eval.write_text('{"prompt": "p", "reference": "r", "stratum": "s"}\n{"prompt": "q", "stratum": "s"}\n')
    with pytest.raises(DatasetError, match=r'hard_eval.jsonl, line 2: "reference" must be a non-empty string'):
        build_dataset(records("a", 10), tmp_path / "out", hard_eval)
    assert not (tmp_path / "out").exists()
