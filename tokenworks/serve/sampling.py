"""A request body's sampling fields as the engine's `SamplingParams`, one set per choice."""

from __future__ import annotations

import dataclasses

from tokenworks.engine import SamplingParams
from tokenworks.engine.sampling_params import StructuredOutput
from tokenworks.serve.errors import APIError
from tokenworks.serve.protocol import SamplingFields
from tokenworks.serve.structured import structured_output_of

MIN_TEMPERATURE = 1e-2  # as vLLM: smaller positive temperatures overflow the scaled logits


def sampling_params(
    body: SamplingFields, max_tokens: int | None, logprobs: int | None, prompt_logprobs: int | None = None,
    forced: StructuredOutput | None = None,
) -> SamplingParams:  # fmt: skip
    """The engine's parameters for a body; ValueError (a 400) names any field out of range.
    `forced`: a constraint of the server's own (a forced tool call), which the body's may not join."""
    structured = structured_output_of(body)
    if forced is not None and structured is not None:
        raise APIError(400, "a forced tool call cannot be combined with a structured output", param="tool_choice")
    temperature = 1.0 if body.temperature is None else body.temperature
    if 0.0 < temperature < MIN_TEMPERATURE:
        temperature = MIN_TEMPERATURE
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    return SamplingParams(
        max_tokens=max_tokens,
        min_tokens=body.min_tokens,
        temperature=temperature,
        top_k=body.top_k or 0,
        top_p=1.0 if body.top_p is None else body.top_p,
        min_p=body.min_p or 0.0,
        repetition_penalty=1.0 if body.repetition_penalty is None else body.repetition_penalty,
        presence_penalty=body.presence_penalty or 0.0,
        frequency_penalty=body.frequency_penalty or 0.0,
        seed=body.seed,
        stop=stop,
        stop_token_ids=list(body.stop_token_ids or []),
        include_stop_str_in_output=body.include_stop_str_in_output,
        ignore_eos=body.ignore_eos,
        logprobs=logprobs,
        prompt_logprobs=prompt_logprobs,
        structured_output=forced or structured,
        skip_special_tokens=body.skip_special_tokens,
    )


def choice_params(params: SamplingParams, n: int) -> list[SamplingParams]:
    """One parameter set per choice: with a seed, choice i samples with seed + i (as vLLM does)."""
    if n == 1 or params.seed is None:
        return [params] * n
    return [dataclasses.replace(params, seed=params.seed + i) for i in range(n)]
