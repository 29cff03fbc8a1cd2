"""A request body's structured-output fields as the engine's one `StructuredOutput`.

OpenAI's `response_format` (`json_object`, `json_schema` with `strict` or not), vLLM's
`structured_outputs` (`json`, `regex`, `choice`, `grammar`, `json_object`) and its older
`guided_json`, `guided_regex`, `guided_choice`, `guided_grammar`: at most one constraint a
request, compiled here (grammar.py, cached) so that one that cannot be is a 400 naming the
field and the reason before anything is queued.
"""

from __future__ import annotations

import json
from typing import Any

from tokenworks.engine.grammar import check_grammar
from tokenworks.engine.sampling_params import StructuredOutput
from tokenworks.serve.errors import APIError
from tokenworks.serve.protocol import SamplingFields


def structured_output_of(body: SamplingFields) -> StructuredOutput | None:
    asked = _constraints(body)
    if not asked:
        return None
    if len(asked) > 1:
        names = ", ".join(param for param, _ in asked)
        raise APIError(400, f"give one structured-output constraint, not several: {names}", param=asked[1][0])
    param, structured = asked[0]
    try:
        check_grammar(structured)
    except ValueError as error:
        raise APIError(400, f"{param} cannot be compiled into a grammar: {error}", param=param) from None
    return structured


def _constraints(body: SamplingFields) -> list[tuple[str, StructuredOutput]]:
    asked: list[tuple[str, StructuredOutput]] = []
    response_format = body.response_format
    if response_format is not None and response_format.type == "json_object":
        asked.append(("response_format", StructuredOutput("json_object")))
    elif response_format is not None and response_format.type == "json_schema":
        if response_format.json_schema is None:
            raise APIError(400, "response_format json_schema needs its json_schema object", param="response_format")
        asked.append(("response_format", StructuredOutput("json", _schema_text(response_format.json_schema.schema_))))
    extras = body.structured_outputs
    fields: list[tuple[str, str, Any]] = [
        ("guided_json", "json", body.guided_json), ("guided_regex", "regex", body.guided_regex),
        ("guided_choice", "choice", body.guided_choice), ("guided_grammar", "grammar", body.guided_grammar),
    ]  # fmt: skip
    if extras is not None:
        fields += [
            ("structured_outputs.json", "json", extras.json_), ("structured_outputs.regex", "regex", extras.regex),
            ("structured_outputs.choice", "choice", extras.choice),
            ("structured_outputs.grammar", "grammar", extras.grammar),
            ("structured_outputs.json_object", "json_object", extras.json_object or None),
        ]  # fmt: skip
    for param, kind, value in fields:
        if value is None:
            continue
        if kind == "json":
            value = _schema_text(value, param)
        elif kind == "choice":
            value = json.dumps(value)
        elif kind == "json_object":
            value = ""
        asked.append((param, StructuredOutput(kind, value)))
    return asked


def _schema_text(schema: dict | str, param: str = "response_format") -> str:
    """One text per schema, keys sorted: the engine compiles each distinct text once."""
    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except ValueError as error:
            raise APIError(400, f"{param} is not a JSON schema: {error}", param=param) from None
    return json.dumps(schema, sort_keys=True, separators=(",", ":"))
