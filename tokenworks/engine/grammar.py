"""Structured outputs as grammars: a request's constraint, compiled by llguidance.

`grammar_of` turns a `StructuredOutput` (a JSON schema, any JSON object, a regex, a list of
choices, a Lark or GBNF grammar) into llguidance's grammar text, and `check_grammar` says
why one cannot compile, so the server answers 400 before anything is queued. Neither needs
the tokenizer nor torch: the HTTP process calls them. The engine core compiles each grammar
once against the model's tokenizer and masks every step's logits by it
(structured_output.py).

JSON is generated compact (no free whitespace between tokens: a small model left free to
emit whitespace can fill its whole budget with it), as `separators=(",", ":")` writes it.
"""

from __future__ import annotations

import functools
import json

from tokenworks.engine.sampling_params import StructuredOutput

# Compact JSON: one separator each, no whitespace between values.
JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ",", "key_separator": ":"}


def grammar_of(structured: StructuredOutput) -> str:
    """llguidance's grammar text for the constraint; ValueError for text that is not what its
    kind needs (a schema that is not JSON, choices that are not a list of strings)."""
    from llguidance import LLMatcher

    kind, value = structured.kind, structured.value
    if kind == "json_object":
        return LLMatcher.grammar_from_json_schema({"type": "object"}, defaults=JSON_OPTIONS)
    if kind == "json":
        try:
            schema = json.loads(value)
        except ValueError as error:
            raise ValueError(f"the JSON schema is not valid JSON: {error}") from None
        if not isinstance(schema, dict):
            raise ValueError("the JSON schema must be a JSON object")
        return LLMatcher.grammar_from_json_schema(schema, defaults=JSON_OPTIONS)
    if kind == "regex":
        return LLMatcher.grammar_from_regex(value)
    if kind == "choice":
        choices = json.loads(value)
        if not choices or not all(isinstance(choice, str) and choice for choice in choices):
            raise ValueError("choices must be a non-empty list of non-empty strings")
        # Each choice a Lark string literal; JSON's escapes are Lark's.
        return LLMatcher.grammar_from_lark("start: " + " | ".join(json.dumps(choice) for choice in choices))
    from llguidance.gbnf_to_lark import any_to_lark

    try:
        lark = any_to_lark(value)  # GBNF (llama.cpp's, xgrammar's EBNF) becomes Lark; Lark stays
    except Exception as error:  # the converter's own parse errors
        raise ValueError(f"the grammar does not parse: {error}") from None
    return LLMatcher.grammar_from_lark(lark)


@functools.lru_cache(maxsize=256)  # the server checks every request; schemas repeat
def check_grammar(structured: StructuredOutput) -> str:
    """The compiled grammar text, or ValueError saying why the constraint cannot be compiled."""
    from llguidance import LLMatcher

    grammar = grammar_of(structured)
    problem = LLMatcher.validate_grammar(grammar)
    if problem:
        raise ValueError(problem.strip())
    return grammar
