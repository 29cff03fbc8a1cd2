"""The default corpus: the interpreter's own documentation, read without importing it."""

from __future__ import annotations

import itertools
import pydoc_data.topics

from tokenworks.data import python_docs


def test_topics_come_first_in_sorted_order() -> None:
    topics = list(python_docs(include_modules=False))
    assert [doc.id for doc in topics] == [f"topic:{name}" for name in sorted(pydoc_data.topics.topics)]
    assert all(doc.source == "python-docs" and doc.text for doc in topics)


def test_stdlib_modules_carry_their_docstrings_and_tests_are_left_out() -> None:
    modules = {doc.id: doc for doc in python_docs(include_topics=False)}
    assert len(modules) > 300
    json_doc = modules["module:json"].text
    assert json_doc.startswith("JSON (JavaScript Object Notation)")
    assert "\ndumps\nSerialize ``obj`` to a JSON formatted ``str``." in json_doc
    assert "module:collections" in modules  # a package's __init__ is named after the package
    assert not any(".test." in name or name.startswith("module:test.") for name in modules)


def test_the_corpus_is_deterministic() -> None:
    first = [(d.id, len(d.text)) for d in itertools.islice(python_docs(), 150)]
    assert first == [(d.id, len(d.text)) for d in itertools.islice(python_docs(), 150)]
