"""Tool calls: the tools a chat request offers, the grammar that forces a call, and the parser
that turns the model's `<tool_call>` blocks into OpenAI's `tool_calls`, whole or streamed.

The format is Hermes' (Qwen2.5's and NousHermes'): the model answers with text, then one or
more `<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>` blocks. With
`tool_choice: "required"` (or a named function) the answer is constrained by a Lark grammar
that admits only such blocks, each a JSON object of a tool's name and arguments following its
`parameters` schema (llguidance's %json), so the call always parses and validates; with
`parallel_tool_calls: false`, exactly one. With `auto` the model decides, and text that is not
a well-formed call stays content.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from tokenworks.engine.grammar import check_grammar
from tokenworks.engine.sampling_params import StructuredOutput
from tokenworks.model.tokenizer import Tokenizer
from tokenworks.serve.errors import APIError
from tokenworks.serve.protocol import ChatCompletionRequest, Tool

OPEN, CLOSE = "<tool_call>", "</tool_call>"
_BLOCK = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)
_COMPACT_JSON = {"whitespace_flexible": False, "item_separator": ",", "key_separator": ":"}


@dataclass(slots=True)
class ToolUse:
    """What a chat request's tools ask of the server."""

    rendered: list[dict[str, Any]] | None  # the tools for the chat template
    forced: StructuredOutput | None  # the grammar of a required or named call
    parse: bool  # whether the answer's <tool_call> blocks become tool_calls


def tool_use_of(body: ChatCompletionRequest, tokenizer: Tokenizer | None) -> ToolUse:
    """The request's tools, checked: a 400 naming the field for what cannot be honoured."""
    choice = tool_choice_of(body)
    rendered = [tool.model_dump(exclude_none=True) for tool in body.tools] if body.tools else None
    if rendered and tokenizer is not None and not tokenizer.renders_tools:
        raise APIError(400, "this model's chat template does not render tools", param="tools")
    if choice == "auto" and any(tool.function.strict for tool in body.tools or []):
        raise APIError(400, "strict functions are enforced with tool_choice required or a named function, "
                       "not auto (the model may answer in text there)", param="tool_choice")  # fmt: skip
    forced = None
    if choice not in ("none", "auto"):  # required, or a named function: only calls may come out
        forced = forced_call_grammar(body.tools, choice, body.parallel_tool_calls)
        try:
            check_grammar(forced)
        except ValueError as error:
            raise APIError(400, f"the tools' parameters cannot be compiled: {error}", param="tools") from None
    return ToolUse(rendered, forced, parse=choice != "none")


def tool_choice_of(body: ChatCompletionRequest) -> str:
    """'none', 'auto', 'required' or the named function; a 400 for a choice that cannot be."""
    choice = body.tool_choice
    if not body.tools:
        if choice not in (None, "none"):
            raise APIError(400, "tool_choice needs tools", param="tool_choice")
        return "none"
    if choice is None:
        return "auto"
    if isinstance(choice, str):
        return choice
    names = [tool.function.name for tool in body.tools]
    if choice.function.name not in names:
        raise APIError(400, f"tool_choice names {choice.function.name!r}, not one of the tools ({', '.join(names)})",
                       param="tool_choice")  # fmt: skip
    return choice.function.name


def forced_call_grammar(tools: list[Tool], choice: str, parallel: bool) -> StructuredOutput:
    """The grammar of an answer that is only tool calls: of any tool (required) or the named one."""
    chosen = [tool for tool in tools if choice == "required" or tool.function.name == choice]
    rules = []
    for index, tool in enumerate(chosen):
        schema = {
            "type": "object",
            "properties": {
                "name": {"const": tool.function.name},
                "arguments": tool.function.parameters or {"type": "object"},
            },
            "required": ["name", "arguments"],
            "additionalProperties": False,
            "x-guidance": _COMPACT_JSON,
        }
        rules.append(f"call_{index}: %json {json.dumps(schema)}")
    calls = " | ".join(f"call_{index}" for index in range(len(chosen)))
    block = f'"{OPEN}\\n" ({calls}) "\\n{CLOSE}"'
    start = f'start: {block} ("\\n" {block})*' if parallel and choice == "required" else f"start: {block}"
    return StructuredOutput("grammar", "\n".join([start, *rules]))


def parse_tool_calls(text: str) -> tuple[str | None, list[dict[str, Any]]]:
    """(the content before the first call, or None when there is none; the calls), from a
    whole answer. A block whose JSON is not a {name, arguments} object is left in the content."""
    calls = []
    for match in _BLOCK.finditer(text):
        call = _call_of(match.group(1))
        if call is None:
            return text, []
        calls.append(call)
    if not calls:
        return text, []
    content = text[: text.index(OPEN)].strip()
    return content or None, calls


def _call_of(payload: str) -> dict[str, Any] | None:
    try:
        parsed = json.loads(payload)
    except ValueError:
        return None
    if not isinstance(parsed, dict) or not isinstance(parsed.get("name"), str):
        return None
    arguments = parsed.get("arguments", {})
    return {
        "id": f"call_{uuid.uuid4().hex[:24]}",
        "type": "function",
        "function": {"name": parsed["name"], "arguments": json.dumps(arguments, ensure_ascii=False)},
    }


@dataclass(slots=True)
class ToolCallStream:
    """Streams an answer's text as content until a `<tool_call>` begins, holding back what may
    be the start of one; each complete block then goes out as one `tool_calls` delta (its id,
    name and whole arguments, which OpenAI's clients accumulate like any other)."""

    text: str = ""
    sent: int = 0  # characters of text already handed out as content
    calls: int = 0
    in_calls: bool = False
    _scanned: int = field(default=0, repr=False)  # where the next block is searched from

    def push(self, delta: str, finished: bool) -> tuple[str, list[dict[str, Any]]]:
        """The content to send now and the calls completed by this delta."""
        self.text += delta
        content = ""
        if not self.in_calls:
            start = self.text.find(OPEN, self.sent)
            if start < 0:
                safe = len(self.text) if finished else self._safe_end()
                content, self.sent = self.text[self.sent : safe], max(self.sent, safe)
                return content, []
            self.in_calls, self._scanned = True, start
            content = self.text[self.sent : start].rstrip("\n")
            self.sent = start
        calls = self._complete_calls()
        if finished and not self.calls:  # cut off inside its only <tool_call>: content, as parse_tool_calls says
            content += self.text[self.sent :]
            self.sent = len(self.text)
        return content, calls

    def _safe_end(self) -> int:
        """Where the text may end without cutting what could become `<tool_call>`."""
        for keep in range(min(len(OPEN) - 1, len(self.text) - self.sent), 0, -1):
            if OPEN.startswith(self.text[-keep:]):
                return len(self.text) - keep
        return len(self.text)

    def _complete_calls(self) -> list[dict[str, Any]]:
        calls = []
        for match in _BLOCK.finditer(self.text, self._scanned):
            call = _call_of(match.group(1))
            self._scanned = match.end()
            if call is not None:
                calls.append({"index": self.calls, **call})
                self.calls += 1
        return calls
