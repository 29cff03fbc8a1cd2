"""Shared fixtures: a small tokenizer trained once per session on the default corpus."""

from __future__ import annotations

import itertools

import pytest

from tokenworks.data import python_docs
from tokenworks.model import Tokenizer


@pytest.fixture(scope="session")
def corpus() -> list[str]:
    return [doc.text for doc in itertools.islice(python_docs(include_modules=False), 40)]


@pytest.fixture(scope="session")
def tokenizer(corpus: list[str]) -> Tokenizer:
    return Tokenizer.train(corpus, vocab_size=700)
