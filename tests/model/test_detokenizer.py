"""Streaming detokenization: deltas concatenate to the full decode, whatever the split."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer as BackendTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from tokenworks.model import Tokenizer


def _stream(tokenizer: Tokenizer, ids: list[int], chunk: int = 1, skip_special_tokens: bool = False) -> list[str]:
    detokenizer = tokenizer.detokenizer(skip_special_tokens=skip_special_tokens)
    deltas = [detokenizer.push(ids[i : i + chunk]) for i in range(0, len(ids), chunk)]
    deltas.append(detokenizer.flush())
    assert detokenizer.text == "".join(deltas)
    return deltas


def test_multibyte_characters_are_held_until_complete(tokenizer: Tokenizer) -> None:
    # Each of these characters is 3 or 4 UTF-8 bytes that the small BPE cannot merge.
    text = "a€日🐍"
    ids = tokenizer.encode(text)
    deltas = _stream(tokenizer, ids)
    assert "".join(deltas) == text
    assert [d for d in deltas if d] == ["a", "€", "日", "🐍"]
    assert "\ufffd" not in "".join(deltas)


@settings(max_examples=200, deadline=None)
@given(text=st.text(), chunk=st.integers(1, 4))
def test_deltas_concatenate_to_the_text(tokenizer: Tokenizer, text: str, chunk: int) -> None:
    assert "".join(_stream(tokenizer, tokenizer.encode(text), chunk)) == text


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_random_ids_stream_exactly_as_they_decode(tokenizer: Tokenizer, data) -> None:
    # Random ids make invalid UTF-8 and stray special tokens: the stream must still match decode.
    ids = data.draw(st.lists(st.integers(0, tokenizer.vocab_size - 1), max_size=30))
    skip = data.draw(st.booleans())
    assert "".join(_stream(tokenizer, ids, skip_special_tokens=skip)) == tokenizer.decode(ids, skip)


def test_non_byte_level_decoders_merge_pieces_across_tokens() -> None:
    # WordPiece writes "##" continuations: a token's text depends on the token before it.
    backend = BackendTokenizer(models.WordPiece(unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.decoder = decoders.WordPiece()
    corpus = ["streaming detokenization joins word pieces", "pieces of words stream"] * 20
    backend.train_from_iterator(corpus, trainers.WordPieceTrainer(vocab_size=60, special_tokens=["[UNK]", "<eos>"]))
    tokenizer = Tokenizer(backend, eos_token="<eos>", chat_template=None)
    ids = tokenizer.encode("streaming detokenization joins pieces")
    assert any(backend.id_to_token(i).startswith("##") for i in ids)
    deltas = _stream(tokenizer, ids)
    assert "".join(deltas) == tokenizer.decode(ids) == "streaming detokenization joins pieces"
