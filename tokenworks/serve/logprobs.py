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
    """OpenAI's legacy logprobs for output tokens [start:], text offsets counted from `offset`."""
    return legacy_logprobs(tokenizer, output.token_ids[start:], output.logprobs[start:], offset)


def legacy_logprobs(
    tokenizer: Tokenizer | None, token_ids: list[int], entries: list[dict[int, float] | None], offset: int = 0
) -> dict[str, list]:
    """The completions API's logprobs object for these tokens: each token's text and logprob,
    its `top_logprobs` (the top k the request asked for and the token itself), and where its
    text starts, counted from `offset`. A position without an entry (a prompt's first token)
    has null logprobs, as OpenAI's echo and vLLM write it."""
    tokens, token_logprobs, top_logprobs, text_offset = [], [], [], []
    for token_id, candidates in zip(token_ids, entries, strict=False):
        text = token_text(tokenizer, token_id)
        tokens.append(text)
        if candidates is None:
            token_logprobs.append(None)
            top_logprobs.append(None)
        else:
            token_logprobs.append(finite(candidates.get(token_id, float("-inf"))))
            top: dict[str, float] = {}
            for t, value in sorted(candidates.items(), key=lambda item: -item[1]):
                # Keyed by text, as OpenAI's format is: of tokens with one text the likeliest speaks.
                top.setdefault(token_text(tokenizer, t), finite(value))
            top_logprobs.append(top)
        text_offset.append(offset)
        offset += len(text)
    return {
        "tokens": tokens,
        "token_logprobs": token_logprobs,
        "top_logprobs": top_logprobs,
        "text_offset": text_offset,
    }


def join_logprobs(first: dict[str, list], second: dict[str, list]) -> dict[str, list]:
    """Two legacy logprobs objects, one after the other (an echoed prompt, then the output)."""
    return {key: first[key] + second[key] for key in first}


def prompt_logprobs(tokenizer: Tokenizer | None, output: RequestOutput) -> list[dict[str, dict] | None] | None:
    """vLLM's `prompt_logprobs` field: per prompt token null (the first) or, keyed by token id,
    the logprob, vocabulary rank and text of the prompt token and of the top k."""
    if output.prompt_logprobs is None:
        return None
    result: list[dict[str, dict] | None] = []
    for token_id, entry, rank in zip(output.prompt_token_ids, output.prompt_logprobs, output.prompt_ranks, strict=True):
        if entry is None:
            result.append(None)
            continue
        # The top k are the vocabulary's likeliest: their place in the entry is their rank.
        ranks = {t: place for place, t in enumerate(sorted(entry, key=lambda t: -entry[t]), start=1)}
        ranks[token_id] = rank
        result.append({
            str(t): {"logprob": finite(entry[t]), "rank": ranks[t], "decoded_token": token_text(tokenizer, t)}
            for t in sorted(entry, key=lambda t: (t != token_id, ranks[t]))
        })  # fmt: skip
    return result


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
