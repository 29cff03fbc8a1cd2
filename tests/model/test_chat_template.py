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


def test_a_checkpoints_own_template_is_used(tokenizer: Tokenizer, tmp_path) -> None:
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
