"""Chat templates: OpenAI-style messages rendered into a model's prompt text.

tokenworks' own tokenizers use ChatML, one turn per message:

    <|im_start|>system
    You are terse.<|im_end|>
    <|im_start|>user
    Hi<|im_end|>
    <|im_start|>assistant

Each turn is `<|im_start|>` + role + newline + content + `<|im_end|>` + newline; with
`add_generation_prompt` the text ends with an open assistant turn, `<|im_start|>assistant\\n`,
and the model ends its reply with `<|im_end|>`. The template is stored as Jinja in
`tokenizer_config.json`, as Hugging Face does, so `transformers` renders the same text, and a
model directory that brings its own template (Llama 3, Qwen2) is rendered with that one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from tokenworks.errors import TokenizerError

Message = Mapping[str, Any]  # {"role": ..., "content": str | [{"type": "text", "text": ...}]}
ROLES = ("system", "developer", "user", "assistant", "tool")

CHATML_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\n' }}{%- endif -%}"
)


class ChatTemplate:
    """A compiled Jinja chat template, rendered in a sandbox (templates ship with checkpoints)."""

    def __init__(self, source: str, bos_token: str = "", eos_token: str = "") -> None:
        environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        environment.globals["raise_exception"] = _raise_template_error
        try:
            self._template = environment.from_string(source)
        except TemplateError as error:
            raise TokenizerError(f"the chat template does not compile: {error}") from None
        self._tokens = {"bos_token": bos_token, "eos_token": eos_token}

    def render(self, messages: Sequence[Message], add_generation_prompt: bool = True) -> str:
        normalized = [normalize_message(message, index) for index, message in enumerate(messages)]
        if not normalized:
            raise TokenizerError("messages must hold at least one message")
        try:
            return self._template.render(
                messages=normalized, add_generation_prompt=add_generation_prompt, **self._tokens
            )
        except TemplateError as error:
            raise TokenizerError(f"the chat template failed on these messages: {error}") from None


def normalize_message(message: Message, index: int = 0) -> dict[str, Any]:
    """Check one message and flatten list-of-parts content to a string."""
    if not isinstance(message, Mapping):
        raise TokenizerError(f"messages[{index}] must be an object with 'role' and 'content'")
    role = message.get("role")
    if role not in ROLES:
        raise TokenizerError(f"messages[{index}].role must be one of {', '.join(ROLES)}, got {role!r}")
    content = message.get("content")
    if content is None:
        content = ""
    elif isinstance(content, list):
        content = "".join(_text_of_part(part, index) for part in content)
    elif not isinstance(content, str):
        raise TokenizerError(f"messages[{index}].content must be a string or a list of text parts")
    return {**message, "role": role, "content": content}


def _text_of_part(part: Any, index: int) -> str:
    if isinstance(part, Mapping) and part.get("type") == "text" and isinstance(part.get("text"), str):
        return part["text"]
    raise TokenizerError(f"messages[{index}].content must hold only text parts: {{'type': 'text', 'text': ...}}")


def _raise_template_error(message: str) -> None:
    raise TokenizerError(f"the chat template refused these messages: {message}")
