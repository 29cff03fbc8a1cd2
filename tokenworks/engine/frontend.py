"""What LLM and AsyncLLM share: turning prompts into checked token ids, and request state."""

from __future__ import annotations

import itertools
from pathlib import Path

from tokenworks.engine.messages import Ready
from tokenworks.engine.outputs import RequestState
from tokenworks.engine.sampling_params import SamplingParams
from tokenworks.model.tokenizer import Tokenizer

Prompt = str | list[int]


class Frontend:
    """Tokenizes prompts, checks them against the engine's limits, and creates request state."""

    def __init__(self, model_dir: str | Path, ready: Ready) -> None:
        self.ready = ready
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

    def check(self, prompt_ids: list[int], params: SamplingParams) -> None:
        """ValueError naming the limit, before the request reaches the engine (the server's 400)."""
        limit = self.ready.max_model_len
        if not prompt_ids:
            raise ValueError("the prompt must hold at least one token")
        if any(not isinstance(t, int) or not 0 <= t < self.ready.vocab_size for t in prompt_ids):
            raise ValueError(f"prompt token ids must be integers in [0, {self.ready.vocab_size})")
        if len(prompt_ids) >= limit:
            raise ValueError(f"the prompt has {len(prompt_ids)} tokens; this model's context is {limit} tokens")
        if params.max_tokens is not None and len(prompt_ids) + params.max_tokens > limit:
            raise ValueError(
                f"the prompt ({len(prompt_ids)} tokens) plus max_tokens ({params.max_tokens}) is "
                f"{len(prompt_ids) + params.max_tokens} tokens, more than this model's context of {limit} tokens"
            )

    def new_state(self, request_id: str, prompt_ids: list[int], params: SamplingParams) -> RequestState:
        detokenizer = self.tokenizer.detokenizer(params.skip_special_tokens) if self.tokenizer else None
        return RequestState(request_id, prompt_ids, params, detokenizer)
