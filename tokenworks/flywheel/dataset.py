"""The flywheel's dataset builder: labelled records -> SFT chat JSONL, a frozen hard-eval set, a manifest.

Input records are plain dicts, one JSON object a line when read from a file:
    prompt   str  the user's prompt, as served
    label    str  the answer to train toward (a user's correction, a teacher's answer, a reference)
    stratum  str  what the split is stratified by: the flag rule that caught it or the workload id
    source   str  optional: where the label came from (correction, teacher, reference)
    id       str  optional: the request id, carried into the hard-eval file
The request log feeds them later; the builder needs nothing else from it.

A build, in order: dedup by normalised prompt (the first record wins); take the hard-eval set
from the frozen file if it exists, else choose it (stratified) and write that file once; drop its
prompts from the rest, so no candidate trains on what judges it; split the rest per stratum into
train and validation. Every choice orders a stratum by a sha256 of the normalised prompt, so
the same records give the same files, and a record's place does not depend on the input order.
"""

from __future__ import annotations

import hashlib
import json
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenworks.errors import TokenworksError
from tokenworks.flywheel.model_files import file_sha256

TRAIN_NAME, VALIDATION_NAME, HARD_EVAL_NAME, MANIFEST_NAME = (
    "train.jsonl",
    "validation.jsonl",
    "hard_eval.jsonl",
    "manifest.json",
)
_REQUIRED = ("prompt", "label", "stratum")


class DatasetError(TokenworksError):
    """The records or the frozen hard-eval file cannot be read, or the build cannot be written."""


@dataclass(frozen=True, slots=True)
class Record:
    prompt: str
    label: str
    stratum: str
    source: str = ""
    id: str = ""

    @property
    def key(self) -> str:
        return normalize_prompt(self.prompt)


@dataclass(frozen=True, slots=True)
class BuildResult:
    out: Path
    train: int
    validation: int
    hard_eval: int
    duplicates: int  # records dropped as repeats of an earlier prompt
    held_for_eval: int  # records dropped because the frozen hard-eval set holds their prompt
    manifest: Path


def normalize_prompt(prompt: str) -> str:
    """NFKC, case-folded, whitespace collapsed: the prompts a user would call the same."""
    return " ".join(unicodedata.normalize("NFKC", prompt).casefold().split())


def read_records(path: Path) -> list[Record]:
    """Records from JSONL; DatasetError naming the first bad line and what is wrong with it."""
    return _read_jsonl(path, "the records", record_of)


def _read_jsonl(path: Path, what: str, parse: Callable[[Any], Record]) -> list[Record]:
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise DatasetError(f"cannot read {what} {path}: {error}") from None
    records = []
    for number, line in enumerate(lines, start=1):
        if line.strip():
            try:
                records.append(parse(json.loads(line)))
            except json.JSONDecodeError as error:
                raise DatasetError(
                    f"{path}, line {number}: not valid JSON ({error.msg} at column {error.colno})"
                ) from None
            except ValueError as error:
                raise DatasetError(f"{path}, line {number}: {error}") from None
    return records


def record_of(raw: Any) -> Record:
    """A record from a dict; ValueError saying which field is missing or not text."""
    if not isinstance(raw, dict):
        raise ValueError(f"expected a JSON object with {', '.join(_REQUIRED)}, got a {type(raw).__name__}")
    for key in _REQUIRED:
        if not isinstance(raw.get(key), str) or not raw[key].strip():
            raise ValueError(f'"{key}" must be a non-empty string')
    return Record(raw["prompt"], raw["label"], raw["stratum"], str(raw.get("source") or ""), str(raw.get("id") or ""))


def dedup(records: Iterable[Record]) -> list[Record]:
    """The first record of each normalised prompt, in input order."""
    seen: set[str] = set()
    kept: list[Record] = []
    for record in records:
        if record.key not in seen:
            seen.add(record.key)
            kept.append(record)
    return kept


def _rank(record: Record, salt: str) -> str:
    return hashlib.sha256(f"{salt}\0{record.key}".encode()).hexdigest()


def stratified_take(records: Sequence[Record], fraction: float, salt: str) -> tuple[list[Record], list[Record]]:
    """(taken, rest): from each stratum its first round(n * fraction) records by hash order
    (half up, so 2.5 takes 3). Both lists keep the input order."""
    strata: dict[str, list[Record]] = {}
    for record in records:
        strata.setdefault(record.stratum, []).append(record)
    chosen: set[str] = set()
    for members in strata.values():
        count = int(len(members) * fraction + 0.5)
        chosen.update(r.key for r in sorted(members, key=lambda r: _rank(r, salt))[:count])
    return [r for r in records if r.key in chosen], [r for r in records if r.key not in chosen]


def chat_line(record: Record) -> dict[str, Any]:
    """An SFT conversation as `tokenworks train sft` reads it."""
    return {"messages": [{"role": "user", "content": record.prompt}, {"role": "assistant", "content": record.label}]}


def eval_line(record: Record) -> dict[str, Any]:
    """A hard-eval item as flywheel.evaluate reads it."""
    return {"prompt": record.prompt, "reference": record.label, "stratum": record.stratum, "id": record.id}


def read_hard_eval(path: Path) -> list[Record]:
    """The frozen hard-eval items ({"prompt", "reference", "stratum"} a line)."""
    return _read_jsonl(path, "the hard-eval set", _eval_record_of)


def _eval_record_of(raw: Any) -> Record:
    if isinstance(raw, dict) and (not isinstance(raw.get("reference"), str) or not raw["reference"].strip()):
        raise ValueError('"reference" must be a non-empty string')
    return record_of({**raw, "label": raw["reference"]} if isinstance(raw, dict) else raw)


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    with Path(path).open("w", encoding="utf-8") as file:
        for row in rows:
            file.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")


def build_dataset(
    records: Sequence[Record],
    out: Path,
    hard_eval: Path,
    *,
    validation_fraction: float = 0.1,
    hard_eval_fraction: float = 0.2,
) -> BuildResult:
    """Write OUT/train.jsonl, OUT/validation.jsonl and OUT/manifest.json; freeze `hard_eval` on first use."""
    if not 0 <= validation_fraction < 1 or not 0 <= hard_eval_fraction < 1:
        raise DatasetError("the validation and hard-eval fractions must be in [0, 1)")
    unique = dedup(records)
    duplicates = len(records) - len(unique)
    hard_eval = Path(hard_eval)
    if hard_eval.exists():
        frozen = read_hard_eval(hard_eval)
        rest = unique
    else:
        frozen, rest = stratified_take(unique, hard_eval_fraction, "hard-eval")
        if not frozen:
            raise DatasetError("the first build has no records to freeze as the hard-eval set")
        hard_eval.parent.mkdir(parents=True, exist_ok=True)
        write_jsonl(hard_eval, map(eval_line, frozen))
    held = {r.key for r in frozen}
    pool = [r for r in rest if r.key not in held]
    held_for_eval = len(rest) - len(pool)
    validation, train = stratified_take(pool, validation_fraction, "validation")
    if not train:
        raise DatasetError("no records are left to train on after dedup and the hard-eval set")

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / TRAIN_NAME, map(chat_line, train))
    write_jsonl(out / VALIDATION_NAME, map(chat_line, validation))
    manifest = {
        "records": len(records), "duplicates": duplicates, "held_for_eval": held_for_eval,
        "validation_fraction": validation_fraction, "hard_eval_fraction": hard_eval_fraction,
        "strata": _counts(train, validation),
        "outputs": [
            {"path": str(path), "lines": lines, "sha256": file_sha256(path)}
            for path, lines in ((out / TRAIN_NAME, len(train)), (out / VALIDATION_NAME, len(validation)), (hard_eval, len(frozen)))
        ],
    }  # fmt: skip
    (out / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return BuildResult(out, len(train), len(validation), len(frozen), duplicates, held_for_eval, out / MANIFEST_NAME)


def _counts(train: Sequence[Record], validation: Sequence[Record]) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = {}
    for split, records in (("train", train), ("validation", validation)):
        for record in records:
            counts.setdefault(record.stratum, {"train": 0, "validation": 0})[split] += 1
    return dict(sorted(counts.items()))
