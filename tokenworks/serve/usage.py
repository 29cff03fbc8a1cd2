"""OpenAI's `usage` object: for a whole answer, and for a stream as its chunks go out."""

from __future__ import annotations

from tokenworks.engine import RequestOutput
from tokenworks.serve.protocol import StreamOptions


def usage(prompts: list[list[int]], finals: dict[int, RequestOutput], n: int) -> dict:
    """Each prompt counted once, every choice's tokens, and the prompt tokens found in the prefix cache."""
    prompt_tokens = sum(len(ids) for ids in prompts)
    completion_tokens = sum(len(output.token_ids) for output in finals.values())
    cached = sum(finals[p * n].num_cached_tokens for p in range(len(prompts)) if p * n in finals)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached},
    }


class StreamUsage:
    """The usage of a stream: per chunk when `continuous_usage_stats` is asked for (vLLM's
    extra), and one last chunk with `choices: []` when `include_usage` is."""

    def __init__(self, prompt_ids: list[list[int]], n: int, options: StreamOptions | None) -> None:
        self.prompt_ids, self.n = prompt_ids, n
        self.include = options is not None and options.include_usage
        self.continuous = self.include and options.continuous_usage_stats
        self.finals: dict[int, RequestOutput] = {}

    def chunk(self, base: dict, choice: dict, index: int, output: RequestOutput) -> dict:
        if output.finished:
            self.finals[index] = output
        chunk = {**base, "choices": [choice]}
        if self.continuous:
            chunk["usage"] = usage(self.prompt_ids, {**self.finals, index: output}, self.n)
        return chunk

    def last_chunk(self, base: dict) -> dict | None:
        return {**base, "choices": [], "usage": usage(self.prompt_ids, self.finals, self.n)} if self.include else None
