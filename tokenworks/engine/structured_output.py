"""The engine core's side of structured outputs: one llguidance matcher per constrained
request, and each step's token masks for all of them at once.

A grammar is compiled once (the first request with it) against the model's tokenizer and
kept; each request takes a copy of that matcher (microseconds), which follows its output
token by token. Masks come from llguidance's executor, every constrained row of the step in
one call (in parallel where there are threads to spare), as one bit per vocabulary entry;
the sampler sets the disallowed logits to -inf. A request whose grammar is complete (a JSON
value closed, the last choice written) ends with finish_reason "stop" without another step.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path

import torch

from tokenworks.engine.grammar import check_grammar
from tokenworks.engine.sampling_params import StructuredOutput

COMPILED_GRAMMARS = 256  # distinct grammars kept compiled (least recently used dropped first)


class GrammarMatchers:
    def __init__(self, tokenizer_json: str, vocab_size: int, eos_token_ids: list[int]) -> None:
        from llguidance import LLExecutor, LLTokenizer

        self.vocab_size = vocab_size
        self.tokenizer = LLTokenizer(tokenizer_json, n_vocab=vocab_size, eos_token=eos_token_ids or None)
        self.executor = LLExecutor()
        self._compiled: OrderedDict[StructuredOutput, object] = OrderedDict()
        self._bits = torch.arange(32, dtype=torch.int32)

    @classmethod
    def for_model(cls, model_dir: str | Path, vocab_size: int, eos_token_ids: list[int]) -> GrammarMatchers | None:
        """From the checkpoint's tokenizer.json; None when it has none (no grammar can be read
        in tokens then, and a constrained request is refused)."""
        path = Path(model_dir) / "tokenizer.json"
        if not path.is_file():
            return None
        return cls(path.read_text(), vocab_size, eos_token_ids)

    def matcher_for(self, structured: StructuredOutput) -> object:
        """A fresh matcher of the constraint; ValueError when it cannot be compiled."""
        from llguidance import LLMatcher

        compiled = self._compiled.get(structured)
        if compiled is None:
            compiled = LLMatcher(self.tokenizer, check_grammar(structured), log_level=0)
            if compiled.is_error():
                raise ValueError(compiled.get_error())
            self._compiled[structured] = compiled
            if len(self._compiled) > COMPILED_GRAMMARS:
                self._compiled.popitem(last=False)
        else:
            self._compiled.move_to_end(structured)
        return compiled.deep_copy()

    @torch.inference_mode()  # the step's logits are inference tensors: changed in place only here
    def mask(self, logits: torch.Tensor, rows: list[int], matchers: list[object]) -> None:
        """Set to -inf, in place, the logits of `rows` whose tokens their matcher does not allow next."""
        words = -(-self.vocab_size // 32)
        bitmask = torch.empty((len(rows), words), dtype=torch.int32)
        self.executor.unsafe_compute_mask_ptr(
            [(matcher, index) for index, matcher in enumerate(matchers)], bitmask.data_ptr(), words * 4, len(rows)
        )
        disallowed = ((bitmask[:, :, None] >> self._bits) & 1).view(len(rows), -1)[:, : logits.shape[1]] == 0
        disallowed = disallowed.to(logits.device)
        if len(rows) == logits.shape[0]:  # every row constrained: no gather and scatter
            logits.masked_fill_(disallowed, float("-inf"))
            return
        index = torch.tensor(rows, device=logits.device)
        logits[index] = logits[index].masked_fill(disallowed, float("-inf"))


def choices_value(choices: list[str]) -> str:
    """A `choice` constraint's value: the choices as a JSON list."""
    return json.dumps(list(choices))
