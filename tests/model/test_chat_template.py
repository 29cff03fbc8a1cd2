"""The documented ChatML template, rendered by tokenworks and by transformers alike."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from tokenworks.errors import TokenizerError
from tokenworks.model import Tokenizer

MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello."},
    {"role": "user", "content": [{"type": "text", "text": "Sort "}, {"type": "text", "text": "[3, 1]"}]},
]
RENDERED = (
    "<|im_start|>system\nYou are terse.<|im_end|>\n"
    "<|im_start|>user\nHi<|im_end|>\n"
    "<|im_start|>assistant\nHello.<|im_end|>\n"
    "<|im_start|>user\nSort [3, 1]<|im_end|>\n"
)


def test_chat_template_renders_the_documented_format(tokenizer: Tokenizer) -> None:
    assert tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=False) == RENDERED
    assert tokenizer.apply_chat_template(MESSAGES) == RENDERED + "<|im_start|>assistant\n"


def test_chat_ids_mark_turns_with_special_tokens(tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode_chat(MESSAGES[:2])
    im_start, im_end = tokenizer.token_to_id("<|im_start|>"), tokenizer.token_to_id("<|im_end|>")
    assert ids.count(im_start) == 3 and ids.count(im_end) == 2
    assert ids[-len(tokenizer.encode("assistant\n")) - 1] == im_start


def test_transformers_renders_the_same_text(tokenizer: Tokenizer, tmp_path) -> None:
    tokenizer.save(tmp_path)
    reference = AutoTokenizer.from_pretrained(tmp_path)
    flat = MESSAGES[:3]
    expected = reference.apply_chat_template(flat, tokenize=False, add_generation_prompt=True)
    assert tokenizer.apply_chat_template(flat) == expected


TOOLS = [{"type": "function", "function": {"name": "now", "parameters": {"type": "object", "properties": {}}}}]
TOOL_TURNS = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Time?"},
    {"role": "assistant", "content": None,
     "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "now", "arguments": '{"zone": "UTC"}'}}]},
    {"role": "tool", "tool_call_id": "c1", "content": "12:00"},
]  # fmt: skip


def test_tools_calls_and_results_render_in_hermes_format(tokenizer: Tokenizer, tmp_path) -> None:
    rendered = tokenizer.apply_chat_template(TOOL_TURNS, tools=TOOLS)
    assert rendered.startswith("<|im_start|>system\nYou are terse.\n\n# Tools\n")
    assert (
        '<tools>\n{"type": "function", "function": {"name": "now", "parameters": {"type": "object", "properties": {}}}}\n</tools>'
        in rendered
    )
    assert rendered.endswith(
        "<|im_start|>user\nTime?<|im_end|>\n"
        '<|im_start|>assistant\n<tool_call>\n{"name": "now", "arguments": {"zone": "UTC"}}\n</tool_call><|im_end|>\n'
        "<|im_start|>tool\n<tool_response>\n12:00\n</tool_response><|im_end|>\n<|im_start|>assistant\n"
    )  # fmt: skip
    assert rendered.count("You are terse.") == 1  # the system message moved into the tools' turn
    tokenizer.save(tmp_path)  # transformers renders the same text from the saved template
    reference = AutoTokenizer.from_pretrained(tmp_path)
    parsed = [{**m, "tool_calls": [{**c, "function": {**c["function"], "arguments": {"zone": "UTC"}}}
                                   for c in m["tool_calls"]]} if m.get("tool_calls") else m for m in TOOL_TURNS]  # fmt: skip
    assert reference.apply_chat_template(parsed, tools=TOOLS, tokenize=False, add_generation_prompt=True) == rendered


def own_copy(tokenizer: Tokenizer, directory) -> Tokenizer:
    """A copy to change: the session's tokenizer is shared with every other test."""
    tokenizer.save(directory)
    return Tokenizer.load(directory)


def test_a_template_without_tools_refuses_them(tokenizer: Tokenizer, tmp_path) -> None:
    tokenizer = own_copy(tokenizer, tmp_path)
    tokenizer.chat_template = "{% for m in messages %}{{ m.content }}{% endfor %}"
    assert not tokenizer.renders_tools
    with pytest.raises(TokenizerError, match="does not render tools"):
        tokenizer.apply_chat_template(MESSAGES[1:2], tools=TOOLS)


def test_a_checkpoints_own_template_is_used(tokenizer: Tokenizer, tmp_path) -> None:
    tokenizer = own_copy(tokenizer, tmp_path / "copy")
    tokenizer.chat_template = "{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}{{ eos_token }}"
    tokenizer.save(tmp_path)
    assert Tokenizer.load(tmp_path).apply_chat_template(MESSAGES[1:3]) == "[user]Hi[assistant]Hello.<|endoftext|>"


@pytest.mark.parametrize(
    ("messages", "complaint"),
    [
        ([], "at least one message"),
        ([{"role": "wizard", "content": "x"}], r"messages\[0\].role must be one of"),
        ([{"role": "user", "content": 5}], r"messages\[0\].content must be a string"),
        ([{"role": "user", "content": [{"type": "image_url"}]}], "text parts"),
        (["hello"], "must be an object"),
    ],
)
def test_invalid_messages_are_clear_errors(tokenizer: Tokenizer, messages, complaint: str) -> None:
    with pytest.raises(TokenizerError, match=complaint):
        tokenizer.apply_chat_template(messages)
