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

import json
from collections.abc import Mapping, Sequence
from typing import Any

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from tokenworks.errors import TokenizerError

Message = Mapping[str, Any]  # {"role": ..., "content": str | [{"type": "text", "text": ...}]}
ROLES = ("system", "developer", "user", "assistant", "tool")

# With `tools`, a first system turn lists their signatures (after the system message's own
# text, if the conversation opens with one) and says how to call them: Hermes' format, which
# Qwen2.5 and NousHermes use, a JSON object of name and arguments between <tool_call> tags.
# An assistant turn's tool_calls follow its content that way; a tool's result comes back as a
# `tool` turn between <tool_response> tags. Without tools the text is plain ChatML.
CHATML_TEMPLATE = (
    "{%- if tools -%}"
    "{{ '<|im_start|>system\n' }}"
    "{%- if messages[0]['role'] == 'system' -%}{{ (messages[0]['content'] or '') + '\n\n' }}{%- endif -%}"
    "{{ '# Tools\n\nYou can call these functions (JSON signatures, one a line):\n<tools>\n' }}"
    "{%- for tool in tools -%}{{ tool | tojson + '\n' }}{%- endfor -%}"
    "{{ '</tools>\n\nTo call one, answer with its name and arguments as JSON between tags:\n'"
    ' + \'<tool_call>\n{"name": "NAME", "arguments": {...}}\n</tool_call><|im_end|>\n\' }}'
    "{%- endif -%}"
    "{%- for message in messages -%}"
    "{%- if not (tools and loop.first and message['role'] == 'system') -%}"
    "{%- if message['role'] == 'tool' -%}"
    "{{ '<|im_start|>tool\n<tool_response>\n' + (message['content'] or '') + '\n</tool_response><|im_end|>\n' }}"
    "{%- else -%}"
    "{{ '<|im_start|>' + message['role'] + '\n' + (message['content'] or '') }}"
    "{%- for call in message['tool_calls'] or [] -%}"
    "{{ ('\n' if message['content'] or not loop.first else '') + '<tool_call>\n' + "
    "{'name': call['function']['name'], 'arguments': call['function']['arguments']} | tojson + '\n</tool_call>' }}"
    "{%- endfor -%}"
    "{{ '<|im_end|>\n' }}"
    "{%- endif -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\n' }}{%- endif -%}"
)


class ChatTemplate:
    """A compiled Jinja chat template, rendered in a sandbox (templates ship with checkpoints)."""

    def __init__(self, source: str, bos_token: str = "", eos_token: str = "") -> None:
        environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        environment.globals["raise_exception"] = _raise_template_error
        # As transformers renders templates: plain JSON (Jinja's own tojson escapes < > & ' for HTML).
        environment.filters["tojson"] = _tojson
        self.renders_tools = "tools" in source
        try:
            self._template = environment.from_string(source)
        except TemplateError as error:
            raise TokenizerError(f"the chat template does not compile: {error}") from None
        self._tokens = {"bos_token": bos_token, "eos_token": eos_token}

    def render(
        self, messages: Sequence[Message], add_generation_prompt: bool = True, tools: Sequence[Any] | None = None
    ) -> str:
        """The prompt text; `tools` (OpenAI's tool objects) for a template that renders them."""
        normalized = [normalize_message(message, index) for index, message in enumerate(messages)]
        if not normalized:
            raise TokenizerError("messages must hold at least one message")
        if tools and not self.renders_tools:
            raise TokenizerError("this model's chat template does not render tools")
        try:
            return self._template.render(
                messages=normalized, add_generation_prompt=add_generation_prompt, tools=list(tools or []) or None,
                **self._tokens,
            )  # fmt: skip
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
    normalized = {**message, "role": role, "content": content}
    if message.get("tool_calls"):
        normalized["tool_calls"] = [_parsed_call(call, index) for call in message["tool_calls"]]
    return normalized


def _parsed_call(call: Any, index: int) -> dict[str, Any]:
    """An OpenAI tool call with its arguments parsed: clients send them as JSON text, and
    templates (ours, Qwen's) render them as an object, as transformers and vLLM hand them over."""
    try:
        function = call["function"]
        arguments = function.get("arguments") or "{}"
        parsed = json.loads(arguments) if isinstance(arguments, str) else arguments
        return {**call, "function": {**function, "name": str(function["name"]), "arguments": parsed}}
    except (TypeError, KeyError, ValueError):
        raise TokenizerError(
            f"messages[{index}].tool_calls must be {{'function': {{'name', 'arguments': JSON text}}}} objects"
        ) from None


def _tojson(value: Any, indent: int | None = None) -> str:
    return json.dumps(value, ensure_ascii=False, indent=indent)


def _text_of_part(part: Any, index: int) -> str:
    if isinstance(part, Mapping) and part.get("type") == "text" and isinstance(part.get("text"), str):
        return part["text"]
    raise TokenizerError(f"messages[{index}].content must hold only text parts: {{'type': 'text', 'text': ...}}")


def _raise_template_error(message: str) -> None:
    raise TokenizerError(f"the chat template refused these messages: {message}")
