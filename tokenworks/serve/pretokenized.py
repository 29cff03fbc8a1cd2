"""A prompt the router has tokenized already, handed to the worker so it is tokenized once.

The `kv` router tokenizes every prompt to find where its blocks are; without this the worker
then tokenizes the same text again, and a request through the router waited for both (the
larger part of what the router added to TTFT: 0.3-0.6 ms for a few hundred tokens). As
Dynamo's frontend hands its workers token ids, the router sends them along in a header:

    X-Tokenworks-Prompt-Tokens: <tokenizer fingerprint>:<digest of the prompt text>:<ids, base64>

The ids are uint32 little-endian. The worker uses them only when both checks hold: its own
tokenizer has that fingerprint (`Tokenizer.fingerprint`), and the text it made of the request
(the chat template rendered, or the completion prompt) has that digest. Since tokenizing is a
function of the text and the tokenizer, the ids are then exactly the ones it would have made;
otherwise it tokenizes the text itself, as without the header. (A client may send the header to
a worker directly: it can choose the prompt's token ids anyway, with a completions request of
token ids. The router passes on no client's header of this name: it sets its own.)

The router sends the header only to workers whose /kv_events named the same fingerprint:
tokenworks workers serving the model the router tokenizes for.

What it saves is the worker's CPU, which counts under load. At concurrency 1 on an idle worker
it does not shorten TTFT on the 2-core host measured: the worker's core then runs the prefill
about as much slower as the tokenization it skipped (docs/benchmarks.md, Router, session 19).
"""

from __future__ import annotations

import base64
import hashlib
import sys
from array import array
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tokenworks.model.tokenizer import Tokenizer

HEADER = "x-tokenworks-prompt-tokens"


def text_digest(text: str) -> str:
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def header_value(fingerprint: str, text: str, token_ids: Sequence[int]) -> str:
    """The header that hands `token_ids`, the tokenization of `text`, to a worker."""
    packed = array("I", token_ids)
    if sys.byteorder == "big":
        packed.byteswap()
    return f"{fingerprint}:{text_digest(text)}:{base64.b64encode(packed.tobytes()).decode()}"


def token_ids_of(value: str | None, fingerprint: str | None, text: str) -> list[int] | None:
    """The ids a header hands over for `text`, if it was made with this tokenizer (its
    fingerprint) for this very text; None otherwise (the caller tokenizes the text itself)."""
    if value is None or fingerprint is None:
        return None
    their_fingerprint, _, rest = value.partition(":")
    digest, _, encoded = rest.partition(":")
    if their_fingerprint != fingerprint or digest != text_digest(text):
        return None
    try:
        packed = array("I", base64.b64decode(encoded, validate=True))
    except ValueError:  # not base64, or not a whole number of ids
        return None
    if sys.byteorder == "big":
        packed.byteswap()
    return packed.tolist()


def prompt_of(headers: Mapping[str, str], tokenizer: Tokenizer | None, prompt: str | list[int]) -> str | list[int]:
    """What a worker hands its engine: the ids the router sent for this text when they hold
    (see the module's docstring), else the prompt as it is (text is tokenized by the engine)."""
    value = headers.get(HEADER)
    if value is None or tokenizer is None or not isinstance(prompt, str):
        return prompt
    token_ids = token_ids_of(value, tokenizer.fingerprint, prompt)
    return prompt if token_ids is None else token_ids
