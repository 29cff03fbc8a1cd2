"""The byte-level BPE tokenizer: training, round trips, files, and what transformers reads."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer

from tokenworks.errors import TokenizerError
from tokenworks.model import Tokenizer
from tokenworks.model.tokenizer import DEFAULT_SPECIAL_TOKENS, END_OF_TEXT, IM_END, IM_START


def test_training_gives_the_asked_vocabulary_with_special_tokens_first(tokenizer: Tokenizer) -> None:
    assert tokenizer.vocab_size == 700
    assert [tokenizer.token_to_id(token) for token in DEFAULT_SPECIAL_TOKENS] == [0, 1, 2]
    assert tokenizer.eos_token_id == 0
    assert tokenizer.special_token_ids == frozenset({0, 1, 2})


def test_special_token_strings_encode_to_their_ids(tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode(f"{IM_START}user\nhi{IM_END}{END_OF_TEXT}")
    assert ids[0] == 1 and ids[-2:] == [2, 0]
    assert tokenizer.decode(ids, skip_special_tokens=True) == "user\nhi"


@settings(max_examples=200, deadline=None)
@given(text=st.text())
def test_any_unicode_round_trips(tokenizer: Tokenizer, text: str) -> None:
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_frequent_words_become_single_tokens(tokenizer: Tokenizer) -> None:
    # " the" is the most frequent word of English documentation: a trained BPE must merge it.
    assert len(tokenizer.encode(" the")) == 1
    assert len(tokenizer.encode("the")) < len("the")


def test_save_and_load_preserve_ids_and_settings(tokenizer: Tokenizer, tmp_path) -> None:
    tokenizer.save(tmp_path)
    loaded = Tokenizer.load(tmp_path)
    text = "Return the list of keys — naïve café 🐍"
    assert loaded.encode(text) == tokenizer.encode(text)
    assert loaded.sha256() == tokenizer.sha256()
    assert (loaded.eos_token, loaded.chat_template) == (tokenizer.eos_token, tokenizer.chat_template)
    assert Tokenizer.load(tmp_path / "tokenizer.json").vocab_size == 700


def test_transformers_reads_the_saved_tokenizer(tokenizer: Tokenizer, tmp_path) -> None:
    tokenizer.save(tmp_path)
    reference = AutoTokenizer.from_pretrained(tmp_path)
    text = "def f(x):\n    return x  # ünïcode"
    assert reference(text, add_special_tokens=False)["input_ids"] == tokenizer.encode(text)
    assert reference.eos_token_id == tokenizer.eos_token_id


def test_training_rejects_a_vocabulary_smaller_than_the_bytes() -> None:
    with pytest.raises(TokenizerError, match="at least 259"):
        Tokenizer.train(["abc"], vocab_size=100)


def test_loading_a_missing_or_corrupt_file_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(TokenizerError, match="not found"):
        Tokenizer.load(tmp_path)
    (tmp_path / "tokenizer.json").write_text(json.dumps({"model": "nonsense"}))
    with pytest.raises(TokenizerError, match=r"not a valid tokenizer.json"):
        Tokenizer.load(tmp_path)
