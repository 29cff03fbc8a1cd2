"""Streaming detokenization: token ids arrive one step at a time, text leaves as deltas.

The deltas of a stream always concatenate to the full decode of its ids. Two cases:
- Byte-level tokenizers (GPT-2 style, tokenworks' own): each id stands for fixed bytes, so
  the text is an incremental UTF-8 decode of the byte stream; a character split across
  tokens is held back until its last byte arrives. Exact by construction.
- Any other decoder (SentencePiece-style Metaspace, WordPiece `##` pieces), where a token's
  text depends on its neighbours: decode a short window of recent ids and emit what the
  newest ids added to it, waiting while the window ends in an incomplete character.
"""

from __future__ import annotations

import codecs
from collections.abc import Callable, Sequence
from functools import cache

REPLACEMENT_CHARACTER = "\ufffd"


@cache
def _byte_of_character() -> dict[str, int]:
    """The inverse of GPT-2's byte-to-printable-character table used by byte-level BPE."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    characters = list(printable)
    shifted = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            characters.append(256 + shifted)
            shifted += 1
    return {chr(character): byte for byte, character in zip(printable, characters, strict=True)}


def byte_level_token_bytes(tokens: Sequence[str | None]) -> list[bytes]:
    """The bytes each token string stands for, as the byte-level decoder maps them.

    A token made only of table characters maps through the table; any other (an added
    token such as "<|endoftext|>" is usually in the table, but need not be) is its UTF-8.
    """
    table = _byte_of_character()
    result = []
    for token in tokens:
        if token is None:
            result.append(b"")
        elif all(character in table for character in token):
            result.append(bytes(table[character] for character in token))
        else:
            result.append(token.encode())
    return result


class IncrementalDetokenizer:
    """Push new token ids, get the text they complete; `flush` at the end of the stream."""

    def __init__(
        self,
        decode: Callable[[list[int], bool], str],
        token_bytes: list[bytes] | None,
        skipped_ids: frozenset[int],
        skip_special_tokens: bool,
    ) -> None:
        self._decode = decode
        self._token_bytes = token_bytes
        self._skipped_ids = skipped_ids
        self._skip_special_tokens = skip_special_tokens
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._ids: list[int] = []
        self._prefix_offset = 0  # window start: the ids before it are fully emitted
        self._read_offset = 0  # ids up to here have had their text emitted
        self.text = ""

    def push(self, token_ids: Sequence[int]) -> str:
        """Add ids; return the text they add (possibly empty while a character is incomplete)."""
        if self._token_bytes is not None:
            delta = self._utf8.decode(b"".join(self._bytes_of(i) for i in token_ids))
        else:
            self._ids.extend(token_ids)
            delta = self._windowed_delta(final=False)
        self.text += delta
        return delta

    def flush(self) -> str:
        """End the stream: whatever was held back, as the full decode would render it."""
        if self._token_bytes is not None:
            delta = self._utf8.decode(b"", final=True)
        else:
            delta = self._windowed_delta(final=True)
        self.text += delta
        return delta

    def _bytes_of(self, token_id: int) -> bytes:
        if token_id in self._skipped_ids or not 0 <= token_id < len(self._token_bytes):
            return b""  # out-of-vocabulary ids (a padded embedding) decode to nothing, as in `tokenizers`
        return self._token_bytes[token_id]

    def _windowed_delta(self, final: bool) -> str:
        window = self._ids[self._prefix_offset :]
        emitted = self._decode(self._ids[self._prefix_offset : self._read_offset], self._skip_special_tokens)
        current = self._decode(window, self._skip_special_tokens)
        if len(current) <= len(emitted) or (current.endswith(REPLACEMENT_CHARACTER) and not final):
            return ""
        self._prefix_offset, self._read_offset = self._read_offset, len(self._ids)
        return current[len(emitted) :]
