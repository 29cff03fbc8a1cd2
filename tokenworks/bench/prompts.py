"""Prompt text with an exact token count, and the tokenizers that count it.

Synthetic prompts are seeded sequences of words from a fixed built-in list, trimmed to the
asked count under the endpoint's own tokenizer (`ModelTokenizer`, from a local
tokenizer.json); with no tokenizer at hand a token is a word (`WordCounter`, approximate).
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from tokenworks.errors import BenchError, TokenizerError

# The word source of synthetic text: fixed and built in, so a seed means the same prompts everywhere.
_WORD_TEXT = """
the of and to in is for that on with as was by at from it be this are an or which have had not
but they his her she he we you all their there been one would will more when who time about if
out up so what can into other some them than then these two may only its new first any also
could like after made over most where much through back years before must because such each many
well way even under being both great still see last those never world same another while long
people state water light house system number order small large point place city power field
group market model data value table figure report music river garden window engine signal paper
letter story answer reason simple common plain early later often always every known given found
shown built moved turned opened closed began kept held left read wrote spoke heard started
stopped called named asked told north south east west morning evening summer winter spring
autumn island forest mountain valley ocean desert bridge road train station harbor village
country nation center corner stone metal glass wood cotton silver golden bright quiet heavy
careful gentle measure balance pattern method process result effect change growth energy motion
"""
WORDS = tuple(_WORD_TEXT.split())
_SPACED_WORD = re.compile(" [a-z]+")
_WORD_CHARACTERS = frozenset(" abcdefghijklmnopqrstuvwxyz")


class PromptTokenizer(Protocol):
    """Counts tokens the way the endpoint does (`exact`), or approximates them."""

    exact: bool  # False: counts are words, an approximation of the endpoint's tokens

    def count(self, text: str) -> int: ...

    def count_chat(self, messages: Sequence[dict[str, Any]]) -> int: ...

    def truncate(self, text: str, tokens: int) -> str: ...

    def encodes_apart(self, pieces: Sequence[str]) -> bool:
        """Whether any text made of these pieces provably counts as the sum of the pieces' counts."""
        ...


class WordCounter:
    """No tokenizer at hand: a token is a whitespace-separated word (approximate)."""

    exact = False

    def count(self, text: str) -> int:
        return len(text.split())

    def count_chat(self, messages: Sequence[dict[str, Any]]) -> int:
        return sum(self.count(message_text(message)) for message in messages)

    def truncate(self, text: str, tokens: int) -> str:
        return "".join(" " + word for word in text.split()[:tokens])

    def encodes_apart(self, pieces: Sequence[str]) -> bool:
        return all(piece[:1].isspace() for piece in pieces)  # then no two pieces make one word


class ModelTokenizer:
    """The endpoint's own tokenizer, from a local tokenizer.json (a model directory)."""

    exact = True

    def __init__(self, tokenizer: Any) -> None:  # a tokenworks.model.Tokenizer
        self.tokenizer = tokenizer
        self._encode = tokenizer.backend.encode

    @classmethod
    def load(cls, path: str | Path) -> ModelTokenizer:
        from tokenworks.model.tokenizer import Tokenizer

        try:
            return cls(Tokenizer.load(path))
        except TokenizerError as error:
            raise BenchError(f"cannot load the tokenizer: {error}") from None

    def count(self, text: str) -> int:
        return len(self._encode(text, add_special_tokens=False))

    def count_chat(self, messages: Sequence[dict[str, Any]]) -> int:
        if self.tokenizer.chat_template is not None:
            return len(self.tokenizer.encode_chat(messages))
        return sum(self.count(message_text(message)) for message in messages)

    def truncate(self, text: str, tokens: int) -> str:
        return self.tokenizer.decode(self._encode(text, add_special_tokens=False).ids[:tokens])

    def encodes_apart(self, pieces: Sequence[str]) -> bool:
        """True for a byte-level tokenizer with GPT-2's split (ours, GPT-2's) and pieces that are a
        space and lowercase ASCII letters: that split makes each such piece a word of its own in any
        text of them, and the model encodes each word alone. Nothing may act on the whole text
        first: no normalizer, no truncation, no added token that could occur in it (one made of
        those characters only), no BPE dropout (it is random)."""
        from tokenizers import pre_tokenizers  # the backend's own package

        backend = self.tokenizer.backend
        pre = backend.pre_tokenizer
        if not (isinstance(pre, pre_tokenizers.ByteLevel) and pre.use_regex):
            return False
        if backend.normalizer is not None or backend.truncation is not None:
            return False
        if getattr(backend.model, "dropout", None):
            return False
        if not all(_SPACED_WORD.fullmatch(piece) for piece in pieces):
            return False
        added = (token.content for token in backend.get_added_tokens_decoder().values())
        return not any(set(content) <= _WORD_CHARACTERS for content in added)


def message_text(message: dict[str, Any]) -> str:
    """A message's text: content is a string or a list of {"type": "text", "text": ...} parts."""
    content = message.get("content") or ""
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content if isinstance(part, dict))


class PromptText:
    """Seeded word text with an exact token count.

    Every piece is a word with its leading space, which byte-level and SentencePiece tokenizers
    encode on its own, so a text's count is the sum of its pieces' counts; the remainder is
    filled with one-token words. Unless the tokenizer's make-up proves that rule
    (`encodes_apart`), the result is checked with one encode and repaired if the tokenizer breaks
    it, so the count returned is always the tokenizer's own.
    """

    def __init__(self, tokenizer: PromptTokenizer) -> None:
        self.tokenizer = tokenizer
        self.pieces = [" " + word for word in WORDS]
        self.costs = [tokenizer.count(piece) for piece in self.pieces]
        self.fillers = [piece for piece, cost in zip(self.pieces, self.costs, strict=True) if cost == 1]
        self.indices = range(len(self.pieces))
        # The check is most of the making's time (an encode of the whole text): skip it where
        # it cannot fail. The texts, and the seeded draws that make them, are the same either way.
        self.counts_add_up = tokenizer.encodes_apart(self.pieces)

    def make(self, tokens: int, rng: random.Random) -> tuple[str, int]:
        """(text, its token count); the count equals `tokens` unless the tokenizer cannot make it so."""
        parts: list[str] = []
        total = 0
        for index in rng.choices(self.indices, k=tokens):  # every piece costs >= 1: k draws suffice
            cost = self.costs[index]
            if total + cost > tokens:
                break
            parts.append(self.pieces[index])
            total += cost
        if self.fillers:
            parts.extend(rng.choices(self.fillers, k=tokens - total))
            total = tokens
        text = "".join(parts)
        if not self.tokenizer.exact:
            return text, tokens
        if self.counts_add_up and total == tokens:
            return text, total
        count = self.tokenizer.count(text)
        if count != tokens:  # the pieces did not add up: cut an over-long text at the token boundary
            text = self.tokenizer.truncate(text + "".join(rng.choices(self.pieces, k=tokens)), tokens)
            count = self.tokenizer.count(text)
        return text, count
