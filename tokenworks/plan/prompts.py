"""The token ids of simulated requests: prompts as the server would see them, outputs planned.

A prompt's ids are what the live server computes from the request (the chat template rendered,
then encoded, for chat; the text encoded for completions), with the model's own tokenizer, so
shared prefixes share blocks in the simulated prefix cache exactly as they would live. Output
ids are planned, not sampled: seeded one-token words, so a multi-turn workload's reply decodes
to text that encodes back to the same ids in the next turn's prompt, as a model's words would.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

from tokenworks.bench.prompts import ModelTokenizer, PromptText
from tokenworks.bench.workloads import RequestSpec
from tokenworks.errors import PlanError
from tokenworks.model.tokenizer import Tokenizer

_RING = 4099  # planned output ids cycle through this many draws (a prime: requests start apart)
_STRIDE = 7919


class SimPrompts:
    def __init__(self, tokenizer: Tokenizer, seed: int = 0) -> None:
        self.tokenizer = tokenizer
        self.counter = ModelTokenizer(tokenizer)  # the bench's exact counts, for the workloads
        words = [tokenizer.encode(piece) for piece in PromptText(self.counter).fillers]
        ids = sorted({word[0] for word in words if len(word) == 1} - tokenizer.special_token_ids)
        if not ids:  # a tokenizer with no one-token words: any ordinary id will do
            ids = [i for i in range(tokenizer.vocab_size) if i not in tokenizer.special_token_ids][:256]
        rng = random.Random(seed)
        ring = [rng.choice(ids) for _ in range(_RING)]
        self._ring = ring + ring  # a slice of up to _RING ids from any start needs no wrapping

    @classmethod
    def load(cls, model_dir: str | Path, seed: int = 0) -> SimPrompts:
        if not (Path(model_dir) / "tokenizer.json").is_file():
            raise PlanError(
                f"{model_dir} has no tokenizer.json; the simulator needs the model's tokenizer for the prompts' ids"
            )
        return cls(Tokenizer.load(model_dir), seed)

    def prompt_ids(self, spec: RequestSpec) -> list[int]:
        """The ids the server would compute for this request (serve/chat.py, engine/frontend.py)."""
        return self.tokenizer.encode(self._text(spec))

    def prompt_ids_of(self, specs: Sequence[RequestSpec]) -> list[list[int]]:
        """`prompt_ids` of many at once: one batch encode, in parallel, a fraction of the time."""
        return self.tokenizer.encode_batch([self._text(spec) for spec in specs])

    def _text(self, spec: RequestSpec) -> str:
        if spec.messages is not None:
            return self.tokenizer.apply_chat_template(spec.messages, True)
        return spec.prompt or ""

    def output_ids(self, index: int, count: int) -> Sequence[int]:
        """The `count` ids request `index` makes (a seeded stretch of one-token words)."""
        start = (index * _STRIDE) % _RING
        if count <= _RING:
            return self._ring[start : start + count]
        return [self._ring[(start + i) % _RING] for i in range(count)]

    def filler_ids(self, index: int, count: int) -> list[int]:
        """A prompt of `count` ids with nothing shared (a replayed log names lengths, not prompts)."""
        rng = random.Random(index)
        ring = self._ring
        return [ring[rng.randrange(_RING)] for _ in range(count)]

    def text(self, token_ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(token_ids))
