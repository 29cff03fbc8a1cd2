"""The docs-QA workload: exact items from a crafted corpus and from the real one, a split by name
that nothing else moves, and files that `tokenworks bench` and the dataset builder read."""

from __future__ import annotations

import json
import sys

import pytest

from tokenworks.bench.workloads import WorkloadOptions, build_workload
from tokenworks.data import python_docs
from tokenworks.data.document import Document
from tokenworks.flywheel.dataset import read_hard_eval
from tokenworks.flywheel.docs_qa import QAItem, docs_qa_items, first_sentence, split_of, write_docs_qa

TOPIC = """\
Sequence methods
****************

str.split(sep=None, maxsplit=-1)

   Return a list of the words in the string, using *sep* as the
   delimiter string.  If *maxsplit* is given, at most *maxsplit*
   splits are done.

str.join(iterable)

   Return a string which is the concatenation of the strings in
   *iterable*.

   ...

bytes.hex([sep[, bytes_per_sep]])

   returns a string object containing two hexadecimal digits.
"""
MODULE = """\
JSON (JavaScript Object Notation) is a subset of JavaScript.

dumps
Serialize ``obj`` to a JSON formatted ``str``.

If ``skipkeys`` is true then ``dict`` keys that are not basic types
will be skipped.

Returns
-------
A string.

_private_helper
Does private things.

JSONEncoder
Extensible JSON encoder for Python data structures.

JSONEncoder.encode
Return a JSON string representation of a Python data structure.

loads
Deserialize ``s`` to a Python object.

dumps
A second docstring of the same name: the first one wins."""

CORPUS = [
    Document("topic:string-methods", TOPIC, "python-docs", {"kind": "topic"}),
    Document("module:json", MODULE, "python-docs", {"kind": "module"}),
    Document("module:_json", "scanstring\nScan the string s for a JSON string.", "python-docs", {"kind": "module"}),
]


def test_items_from_a_crafted_corpus() -> None:
    items = docs_qa_items(CORPUS)
    assert items == [
        QAItem("What does `str.split` do?",
               "Return a list of the words in the string, using *sep* as the delimiter string.", "str.split", "train"),
        QAItem("What does `str.join` do?",
               "Return a string which is the concatenation of the strings in *iterable*.", "str.join", "train"),
        QAItem("What does `json.dumps` do?", "Serialize ``obj`` to a JSON formatted ``str``.", "json.dumps", "train"),
        QAItem("What does `json.JSONEncoder` do?", "Extensible JSON encoder for Python data structures.",
               "json.JSONEncoder", "held_out"),
        QAItem("What does `json.JSONEncoder.encode` do?",
               "Return a JSON string representation of a Python data structure.", "json.JSONEncoder.encode", "train"),
        QAItem("What does `json.loads` do?", "Deserialize ``s`` to a Python object.", "json.loads", "held_out"),
    ]  # fmt: skip
    # bytes.hex: not a sentence (lower case); Returns: a heading; private names and modules: left out.


def test_first_sentence() -> None:
    assert first_sentence("Return the\n  sum.  Then more.") == "Return the sum."
    assert first_sentence("Return x.y of it. More.") == "Return x.y of it."
    assert first_sentence("-------") is None
    assert first_sentence("Too short.") is None
    assert first_sentence("No full stop at the end") is None


def test_the_split_is_by_name_alone() -> None:
    assert [split_of(name) for name in ("str.split", "json.loads", "json.JSONEncoder", "str.isascii")] == [
        "train", "held_out", "held_out", "held_out",
    ]  # fmt: skip
    assert split_of("json.loads", held_out_fraction=0.0) == "train"
    # A name keeps its side when the corpus around it changes.
    alone = docs_qa_items([CORPUS[1]])
    assert {i.function: i.split for i in alone} == {
        i.function: i.split for i in docs_qa_items(CORPUS) if i.function.startswith("json.")
    }


@pytest.fixture(scope="module")
def real_items() -> list[QAItem]:
    return docs_qa_items(python_docs())


def test_the_default_corpus(real_items) -> None:
    by_name = {item.function: item for item in real_items}
    assert by_name["str.split"] == QAItem(
        "What does `str.split` do?",
        "Return a list of the words in the string, using *sep* as the delimiter string.",
        "str.split",
        "train",
    )
    assert by_name["json.dumps"].reference == "Serialize ``obj`` to a JSON formatted ``str``."
    assert by_name["object.__len__"].reference == 'Called to implement the built-in function "len()".'
    assert by_name["str.isascii"].split == "held_out"
    assert len(by_name) == len(real_items)  # one item per name
    assert docs_qa_items(python_docs()) == real_items  # the same corpus, the same items


@pytest.mark.skipif(sys.version_info[:3] != (3, 11, 7), reason="the counts are those of Python 3.11.7's documentation")
def test_the_default_corpus_counts(real_items) -> None:
    assert len(real_items) == 4812
    assert sum(item.split == "held_out" for item in real_items) == 963


def test_files_that_bench_and_the_builder_read(tmp_path) -> None:
    files = write_docs_qa(docs_qa_items(CORPUS), tmp_path, max_tokens=32)
    assert (files.train_items, files.held_out_items) == (4, 2)
    workload = build_workload(WorkloadOptions(kind="jsonl", input_file=files.workload))
    specs = workload.take(4)  # by default bench sends each prompt as a user message
    assert [(s.messages[-1]["content"], s.max_tokens) for s in specs] == [
        ("What does `str.split` do?", 32), ("What does `str.join` do?", 32), ("What does `json.dumps` do?", 32),
        ("What does `json.JSONEncoder.encode` do?", 32),
    ]  # fmt: skip
    first = json.loads(files.workload.read_text().splitlines()[0])
    assert first["reference"].startswith("Return a list of the words") and first["function"] == "str.split"
    held_out = read_hard_eval(files.held_out)
    assert [(r.prompt, r.label, r.stratum) for r in held_out] == [
        ("What does `json.JSONEncoder` do?", "Extensible JSON encoder for Python data structures.", "docs-qa"),
        ("What does `json.loads` do?", "Deserialize ``s`` to a Python object.", "docs-qa"),
    ]
    assert len(read_hard_eval(files.train)) == 4
