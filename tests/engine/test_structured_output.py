"""Structured outputs in the engine: every row its own grammar, constrained and free rows in one
step, and every constrained output parses and validates."""

from __future__ import annotations

import json

import jsonschema
import pytest
import torch

from tokenworks.engine import LLM, SamplingParams
from tokenworks.engine.sampling_params import StructuredOutput

from .conftest import SMALL_KV_CACHE, compiled_kernels, random_prompts

SCHEMAS = {
    "nested objects": {
        "type": "object",
        "properties": {
            "user": {
                "type": "object",
                "properties": {"id": {"type": "integer", "minimum": 0, "maximum": 999},
                               "name": {"type": "string", "maxLength": 6}},
                "required": ["id", "name"], "additionalProperties": False,
            },
            "active": {"type": "boolean"},
        },
        "required": ["user", "active"], "additionalProperties": False,
    },
    "arrays": {"type": "array", "items": {"type": "integer", "minimum": -5, "maximum": 5}, "minItems": 1, "maxItems": 4},
    "enums": {
        "type": "object",
        "properties": {"color": {"enum": ["red", "green", "blue"]}, "size": {"enum": [1, 2, 3]}},
        "required": ["color", "size"], "additionalProperties": False,
    },
    "numbers": {
        "type": "object",
        "properties": {"x": {"type": "number", "minimum": -10, "maximum": 10, "multipleOf": 0.25},
                       "n": {"type": "integer", "minimum": -(10**6), "maximum": 10**6}},
        "required": ["x", "n"], "additionalProperties": False,
    },
    "a regex": {
        "type": "object",
        "properties": {"code": {"type": "string", "pattern": "^[A-Z]{2}-[0-9]{3}$"}},
        "required": ["code"], "additionalProperties": False,
    },
}  # fmt: skip
PER_SCHEMA = 40


@pytest.fixture(scope="module")
def llm(llama_dir):
    with LLM(llama_dir, multiprocess=False, **SMALL_KV_CACHE) as engine:
        yield engine


def test_200_generations_under_5_schemas_parse_and_validate(llm) -> None:
    prompts, params, schemas = [], [], []
    for index, (name, schema) in enumerate(SCHEMAS.items()):
        structured = StructuredOutput("json", json.dumps(schema))
        for i in range(PER_SCHEMA):
            prompts.append(random_prompts(1, seed=100 * index + i)[0])
            # Greedy and sampled rows, free rows between them: one step holds every kind.
            temperature = 0.0 if i % 4 == 0 else 1.0
            params.append(SamplingParams(max_tokens=96, temperature=temperature, seed=i, structured_output=structured))
            schemas.append(name)
    free = random_prompts(8, seed=999)
    outputs = llm.generate(prompts + free, params + [SamplingParams(max_tokens=8, ignore_eos=True)] * len(free))
    for output, name in zip(outputs, schemas, strict=False):
        assert output.finish_reason == "stop", (name, output.text)
        jsonschema.validate(json.loads(output.text), SCHEMAS[name])
    assert [len(output.token_ids) for output in outputs[len(prompts) :]] == [8] * len(free)
    assert len({output.text for output in outputs[: len(prompts)]}) > 100  # sampled, not one answer


def test_choices_regexes_and_grammars(llm) -> None:
    prompt = random_prompts(1, seed=7)[0]
    choices = ["alpha", "beta", "gamma delta"]
    picked = llm.generate(
        [prompt] * 6,
        [SamplingParams(max_tokens=16, temperature=1.0, seed=s, structured_output=StructuredOutput("choice", json.dumps(choices))) for s in range(6)],
    )  # fmt: skip
    assert all(output.text in choices and output.finish_reason == "stop" for output in picked)
    regex = llm.generate(prompt, SamplingParams(max_tokens=16, structured_output=StructuredOutput("regex", "[ab]{3}c")))
    assert len(regex[0].text) == 4 and set(regex[0].text[:3]) <= {"a", "b"} and regex[0].text[3] == "c"
    lark = 'start: item ("," item)*\nitem: "x" | "yy"'
    grammar = llm.generate(prompt, SamplingParams(max_tokens=12, structured_output=StructuredOutput("grammar", lark)))
    assert all(part in ("x", "yy") for part in grammar[0].text.split(","))


def test_a_constraint_that_cannot_compile_is_refused_before_queueing(llm) -> None:
    bogus = SamplingParams(structured_output=StructuredOutput("json", '{"type": "bogus"}'))
    with pytest.raises(ValueError, match="bogus"):
        llm.generate([1, 2, 3], bogus)
    with pytest.raises(ValueError, match="structured output kind"):
        StructuredOutput("xml", "<a/>")


def test_the_compiled_bitmask_clears_exactly_the_clear_bits() -> None:
    kernels = compiled_kernels()
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 100, generator=generator)  # 100 tokens: the last word is partial
    bitmask = torch.randint(-(2**31), 2**31 - 1, (3, 4), generator=generator, dtype=torch.int32)
    bitmask[0, 1], bitmask[1, 2] = 0, -1  # a word all clear, a word all set
    rows = [4, 0, 2]
    masked = logits.clone()
    kernels.apply_token_bitmask_(masked, bitmask, torch.tensor(rows))
    bits = ((bitmask[:, :, None] >> torch.arange(32, dtype=torch.int32)) & 1).view(3, -1)[:, :100]
    for index, row in enumerate(rows):
        cleared = bits[index] == 0
        assert torch.all(masked[row][cleared] == float("-inf"))
        assert torch.equal(masked[row][~cleared], logits[row][~cleared])
    assert torch.equal(masked[[1, 3]], logits[[1, 3]])  # rows without a mask untouched
