"""The engine core's side of structured outputs: one llguidance matcher per constrained
request, and each step's token masks for all of them at once.

A grammar is compiled once (the first request with it) against the model's tokenizer and
kept; each request takes a copy of that matcher (microseconds), which follows its output
token by token. Each step llguidance writes every constrained row's mask, one bit per
vocabulary entry, and the compiled apply_token_bitmask_ (or torch, elsewhere) sets the
disallowed logits to -inf before sampling. A request whose grammar is complete (a JSON
value closed, the last choice written) ends with finish_reason "stop" without another step.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch

from tokenworks.engine.grammar import check_grammar
from tokenworks.engine.sampling_params import StructuredOutput

COMPILED_GRAMMARS = 256  # distinct grammars kept compiled (least recently used dropped first)


class GrammarMatchers:
    def __init__(self, tokenizer_json: str, vocab_size: int, eos_token_ids: list[int], kernels: object = None) -> None:
        """`kernels`: the compiled CPU kernels, whose apply_token_bitmask_ masks the logits."""
        from llguidance import LLTokenizer

        self.vocab_size = vocab_size
        self.tokenizer = LLTokenizer(tokenizer_json, n_vocab=vocab_size, eos_token=eos_token_ids or None)
        self.kernels = kernels
        self._compiled: OrderedDict[StructuredOutput, object] = OrderedDict()
        self._bits = torch.arange(32, dtype=torch.int32)

    @classmethod
    def for_model(
        cls, model_dir: str | Path, vocab_size: int, eos_token_ids: list[int], kernels: object = None
    ) -> GrammarMatchers | None:
        """From the checkpoint's tokenizer.json; None when it has none (no grammar can be read
        in tokens then, and a constrained request is refused)."""
        path = Path(model_dir) / "tokenizer.json"
        if not path.is_file():
            return None
        return cls(path.read_text(), vocab_size, eos_token_ids, kernels)

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
        # On this thread, one matcher after another (20-50 us each): llguidance's thread pool
        # would compute them in parallel, but its threads then spin on the cores the model's
        # threads need, which cost more than it saved (77% of one stream's speed, here).
        for index, matcher in enumerate(matchers):
            matcher.unsafe_compute_mask_ptr(bitmask[index].data_ptr(), words * 4)
        if self.kernels is not None and logits.dtype == torch.float32 and logits.device.type == "cpu":
            self.kernels.apply_token_bitmask_(logits, bitmask, torch.tensor(rows, dtype=torch.long))
            return
        disallowed = ((bitmask[:, :, None] >> self._bits) & 1).view(len(rows), -1)[:, : logits.shape[1]] == 0
        disallowed = disallowed.to(logits.device)
        if len(rows) == logits.shape[0]:  # every row constrained: no gather and scatter
            logits.masked_fill_(disallowed, float("-inf"))
            return
        index = torch.tensor(rows, device=logits.device)
        logits[index] = logits[index].masked_fill(disallowed, float("-inf"))
