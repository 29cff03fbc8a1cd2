"""A request's prompt as the workers will see it: token ids, for the `kv` policy's block keys.

The router tokenizes with the served model's own tokenizer and chat template (the checkpoint
directory: `--tokenizer`, or the `root` a worker's /v1/models names when it is a directory
here), so its blocks are the workers' blocks; the ids are handed to the worker with the request
(serve/pretokenized.py), so a prompt is tokenized once, here. A prompt it cannot make out (no
tokenizer yet, a malformed body) has no tokens: the policy then routes by load alone, and the
worker answers the request as it would.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from tokenworks.model.tokenizer import Tokenizer
from tokenworks.serve.pretokenized import header_value

logger = logging.getLogger(__name__)


class PromptTokenizer:
    def __init__(self, directory: str | Path | None = None) -> None:
        self.tokenizer: Tokenizer | None = None
        self.source: str | None = None
        if directory is not None:
            self.load(directory)

    @staticmethod
    def check(directory: str | Path) -> None:
        """ValueError when a checkpoint directory has no tokenizer to load."""
        if not (Path(directory) / "tokenizer.json").is_file():
            raise ValueError(f"{directory} has no tokenizer.json")

    def load(self, directory: str | Path) -> None:
        """Use the tokenizer in a checkpoint directory; ValueError when it has none."""
        self.check(directory)
        self.tokenizer = Tokenizer.load(directory)
        self.source = str(directory)
        logger.info("router: prompts tokenized with %s", directory)

    def try_load(self, directory: object) -> bool:
        """Load from a directory a worker named, if it is one here with a tokenizer."""
        if not isinstance(directory, str) or not directory:
            return False
        try:
            self.load(directory)
        except (ValueError, OSError):
            return False
        return True

    def tokens(self, path: str, body: dict) -> list[int] | None:
        """The prompt's token ids (the first prompt of a batch), or None."""
        prompt = self.prompt(path, body)
        return prompt.token_ids if prompt is not None else None

    def prompt(self, path: str, body: dict) -> TokenizedPrompt | None:
        """The prompt's text and token ids (the first prompt of a batch), or None."""
        if self.tokenizer is None:
            return None
        try:
            if path.endswith("/chat/completions"):
                return self._chat(body)
            return self._completion(body.get("prompt"))
        except Exception:  # a prompt the router cannot read is the worker's 400, not the router's
            return None

    def header(self, prompt: TokenizedPrompt) -> tuple[str, str] | None:
        """(this tokenizer's fingerprint, the header that hands the prompt's ids to a worker with
        the same tokenizer), when the prompt was text."""
        if prompt.text is None or self.tokenizer is None:
            return None
        fingerprint = self.tokenizer.fingerprint
        return fingerprint, header_value(fingerprint, prompt.text, prompt.token_ids)

    def _completion(self, prompt: object) -> TokenizedPrompt | None:
        if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int):
            prompt = prompt[0]  # a batch: routed by its first prompt
        if isinstance(prompt, str):
            return TokenizedPrompt(prompt, self.tokenizer.encode(prompt))
        if isinstance(prompt, list) and all(isinstance(token, int) for token in prompt):
            return TokenizedPrompt(None, prompt)
        return None

    def _chat(self, body: dict) -> TokenizedPrompt | None:
        messages = body.get("messages")
        if not isinstance(messages, list):
            return None
        tools = body.get("tools") if self.tokenizer.renders_tools else None
        text = self.tokenizer.apply_chat_template(messages, body.get("add_generation_prompt", True), tools)
        return TokenizedPrompt(text, self.tokenizer.encode(text))


@dataclass(slots=True)
class TokenizedPrompt:
    text: str | None  # None: the request gave token ids
    token_ids: list[int]
