"""What LLM and AsyncLLM share: turning prompts into checked token ids, and request state."""

from __future__ import annotations

import itertools
from pathlib import Path

from tokenworks.engine.grammar import check_grammar
from tokenworks.engine.messages import Ready
from tokenworks.engine.output_processor import RequestState
from tokenworks.engine.request import check_prompt
from tokenworks.engine.sampling_params import SamplingParams
from tokenworks.model.tokenizer import Tokenizer

Prompt = str | list[int]


class Frontend:
    """Tokenizes prompts, checks them against the engine's limits, and creates request state."""

    def __init__(self, model_dir: str | Path, ready: Ready) -> None:
        self.ready = ready
        self.loras = dict(ready.loras)  # the core's LoRA adapters, name -> path, kept as they change
        has_tokenizer = (Path(model_dir) / "tokenizer.json").is_file()
        self.tokenizer = Tokenizer.load(model_dir) if has_tokenizer else None
        self._ids = itertools.count()

    def next_request_id(self) -> str:
        return f"req-{next(self._ids)}"

    def prompt_ids(self, prompt: Prompt) -> list[int]:
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ValueError("this model directory has no tokenizer.json: send token ids instead of text")
            return self.tokenizer.encode(prompt)
        return list(prompt)

    def check(self, prompt_ids: list[int], params: SamplingParams, lora: str | None = None) -> None:
        """ValueError naming what the engine would refuse, before anything is queued."""
        check_prompt(prompt_ids, params, self.ready.max_model_len, self.ready.vocab_size)
        if lora is not None and lora not in self.loras:
            raise ValueError(f"no LoRA adapter named {lora!r} is loaded")
        if params.structured_output is not None:
            if self.tokenizer is None:
                raise ValueError("this model directory has no tokenizer.json, so no structured output")
            check_grammar(params.structured_output)

    def new_state(self, request_id: str, prompt_ids: list[int], params: SamplingParams) -> RequestState:
        detokenizer = self.tokenizer.detokenizer(params.skip_special_tokens) if self.tokenizer else None
        return RequestState(request_id, prompt_ids, params, detokenizer)
