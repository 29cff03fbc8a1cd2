"""Output logprobs in OpenAI's two shapes: the legacy completions object and chat's `content` list."""

from __future__ import annotations

import math

from tokenworks.engine import RequestOutput
from tokenworks.model.tokenizer import Tokenizer


def finite(value: float) -> float:
    """JSON has no infinities: -inf logprobs become -9999.0, as vLLM writes them."""
    return value if math.isfinite(value) else -9999.0


def token_text(tokenizer: Tokenizer | None, token_id: int) -> str:
    return tokenizer.decode([token_id]) if tokenizer is not None else f"token_id:{token_id}"


def completion_logprobs(tokenizer: Tokenizer | None, output: RequestOutput, start: int, offset: int) -> dict[str, list]:
    """OpenAI's legacy logprobs for output tokens [start:], text offsets counted from `offset`.

    `top_logprobs` holds the top k the request asked for and the sampled token.
    """
    tokens, token_logprobs, top_logprobs, text_offset = [], [], [], []
    for token_id, candidates in zip(output.token_ids[start:], output.logprobs[start:], strict=False):
        text = token_text(tokenizer, token_id)
        tokens.append(text)
        token_logprobs.append(finite(candidates.get(token_id, float("-inf"))))
        best = sorted(candidates.items(), key=lambda item: -item[1])
        top_logprobs.append({token_text(tokenizer, t): finite(value) for t, value in best})
        text_offset.append(offset)
        offset += len(text)
    return {
        "tokens": tokens,
        "token_logprobs": token_logprobs,
        "top_logprobs": top_logprobs,
        "text_offset": text_offset,
    }


def chat_logprobs(tokenizer: Tokenizer | None, output: RequestOutput, start: int, k: int) -> dict[str, list]:
    """Chat's logprobs for output tokens [start:]: each token with its bytes and its top k."""
    content = []
    for token_id, candidates in zip(output.token_ids[start:], output.logprobs[start:], strict=False):
        text = token_text(tokenizer, token_id)
        best = sorted(candidates.items(), key=lambda item: -item[1])[:k]
        top = [
            {"token": (t := token_text(tokenizer, tid)), "logprob": finite(value), "bytes": list(t.encode())}
            for tid, value in best
        ]
        content.append({
            "token": text, "logprob": finite(candidates.get(token_id, float("-inf"))), "bytes": list(text.encode()),
            "top_logprobs": top,
        })  # fmt: skip
    return {"content": content}
