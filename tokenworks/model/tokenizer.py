"""The tokenizer: a byte-level BPE on Hugging Face `tokenizers`, saved as `tokenizer.json`.

Byte-level means every Unicode string encodes and decodes back exactly, with no unknown
token. tokenworks trains its own with `Tokenizer.train`, and loads any `tokenizer.json`
(with its `tokenizer_config.json`) that a Hugging Face model directory holds.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer as BackendTokenizer
from tokenizers import decoders, models, pre_tokenizers, processors, trainers

from tokenworks.errors import TokenizerError
from tokenworks.model.chat_template import CHATML_TEMPLATE, ChatTemplate, Message
from tokenworks.model.detokenizer import IncrementalDetokenizer, byte_level_token_bytes

TOKENIZER_NAME = "tokenizer.json"
TOKENIZER_CONFIG_NAME = "tokenizer_config.json"
CHAT_TEMPLATE_NAME = "chat_template.jinja"  # where transformers 5 keeps the chat template

END_OF_TEXT = "<|endoftext|>"
IM_START = "<|im_start|>"  # opens a chat turn: <|im_start|>role\n
IM_END = "<|im_end|>"  # closes it, and ends an assistant reply
DEFAULT_SPECIAL_TOKENS = (END_OF_TEXT, IM_START, IM_END)


class Tokenizer:
    """Text <-> token ids, special tokens, the chat template and streaming detokenization."""

    def __init__(
        self,
        backend: BackendTokenizer,
        eos_token: str = END_OF_TEXT,
        chat_template: str | None = CHATML_TEMPLATE,
        bos_token: str | None = None,
        pad_token: str | None = None,
    ) -> None:
        self.backend = backend
        self.eos_token = eos_token
        self.bos_token = bos_token
        self.pad_token = pad_token if pad_token is not None else eos_token
        self.chat_template = chat_template
        self._chat_template_compiled: tuple[str, ChatTemplate] | None = None  # (its source, compiled)
        if self.backend.token_to_id(eos_token) is None:
            raise TokenizerError(f"the end-of-text token {eos_token!r} is not in the vocabulary")

    # ---- training, loading, saving ----------------------------------------------------

    @classmethod
    def train(
        cls,
        texts: Iterable[str],
        vocab_size: int,
        special_tokens: Sequence[str] = DEFAULT_SPECIAL_TOKENS,
        min_frequency: int = 2,
        show_progress: bool = False,
    ) -> Tokenizer:
        """Train a byte-level BPE; special tokens take the first ids, in the order given."""
        minimum = 256 + len(special_tokens)
        if vocab_size < minimum:
            raise TokenizerError(f"vocab_size must be at least {minimum} (256 bytes + special tokens)")
        if END_OF_TEXT not in special_tokens:
            raise TokenizerError(f"special_tokens must include {END_OF_TEXT!r}")
        backend = BackendTokenizer(models.BPE())
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        backend.decoder = decoders.ByteLevel()
        backend.post_processor = processors.ByteLevel(trim_offsets=False)
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=list(special_tokens),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=show_progress,
        )
        backend.train_from_iterator(texts, trainer)
        chat_template = CHATML_TEMPLATE if {IM_START, IM_END} <= set(special_tokens) else None
        return cls(backend, eos_token=END_OF_TEXT, chat_template=chat_template)

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        """Load from a model directory (tokenizer.json + tokenizer_config.json) or a tokenizer.json."""
        path = Path(path)
        directory = path if path.is_dir() else path.parent
        file = path / TOKENIZER_NAME if path.is_dir() else path
        if not file.is_file():
            raise TokenizerError(f"{file} not found: train a tokenizer or point at a model directory")
        try:
            backend = BackendTokenizer.from_file(str(file))
        except Exception as error:  # the Rust side raises plain Exception on malformed files
            raise TokenizerError(f"{file} is not a valid tokenizer.json: {error}") from None
        settings = _read_tokenizer_config(directory)
        eos = _token_text(settings.get("eos_token")) or END_OF_TEXT
        template = settings.get("chat_template")
        if (directory / CHAT_TEMPLATE_NAME).is_file():
            template = (directory / CHAT_TEMPLATE_NAME).read_text()
        if isinstance(template, list):  # a list of named templates: take the default one
            template = next((t["template"] for t in template if t.get("name") == "default"), None)
        return cls(
            backend,
            eos_token=eos,
            chat_template=template,
            bos_token=_token_text(settings.get("bos_token")),
            pad_token=_token_text(settings.get("pad_token")),
        )

    def save(self, directory: str | Path) -> None:
        """Write tokenizer.json and a tokenizer_config.json that `transformers` also reads."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.backend.save(str(directory / TOKENIZER_NAME))
        settings: dict[str, Any] = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "eos_token": self.eos_token,
            "pad_token": self.pad_token,
            "bos_token": self.bos_token,
            "clean_up_tokenization_spaces": False,
            "model_max_length": 1_000_000,
        }
        if self.chat_template is not None:
            settings["chat_template"] = self.chat_template
        (directory / TOKENIZER_CONFIG_NAME).write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")

    # ---- encoding and decoding --------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """Number of ids, special tokens included."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    @property
    def eos_token_id(self) -> int:
        return self.token_to_id(self.eos_token)

    @property
    def bos_token_id(self) -> int | None:
        return self.backend.token_to_id(self.bos_token) if self.bos_token else None

    @property
    def pad_token_id(self) -> int:
        return self.token_to_id(self.pad_token)

    @cached_property
    def special_token_ids(self) -> frozenset[int]:
        return frozenset(
            token_id for token_id, token in self.backend.get_added_tokens_decoder().items() if token.special
        )

    def token_to_id(self, token: str) -> int:
        token_id = self.backend.token_to_id(token)
        if token_id is None:
            raise TokenizerError(f"token {token!r} is not in the vocabulary")
        return token_id

    def encode(self, text: str) -> list[int]:
        """Token ids of the text; special-token strings in it become their special ids. (The
        batch call without offsets: a fifth less time than `encode`, which works out the
        character offsets of every token, which we never read.)"""
        return self.backend.encode_batch_fast([text], add_special_tokens=False)[0].ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [encoding.ids for encoding in self.backend.encode_batch_fast(list(texts), add_special_tokens=False)]

    def decode(self, token_ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return self.backend.decode(list(token_ids), skip_special_tokens=skip_special_tokens)

    def sha256(self) -> str:
        """A content hash of the tokenizer, to record which one made a set of token ids."""
        return hashlib.sha256(self.backend.to_str().encode()).hexdigest()

    @cached_property
    def fingerprint(self) -> str:
        """The start of `sha256`, worked out once: two processes with the same fingerprint make
        the same token ids of the same text (serve/pretokenized.py)."""
        return self.sha256()[:16]

    # ---- chat and streaming -----------------------------------------------------------

    @property
    def renders_tools(self) -> bool:
        """Whether the chat template renders `tools` (ours does; a checkpoint's may not)."""
        return self.chat_template is not None and "tools" in self.chat_template

    def apply_chat_template(
        self, messages: Sequence[Message], add_generation_prompt: bool = True, tools: Sequence[Any] | None = None
    ) -> str:
        """Render OpenAI-style messages (and tools, OpenAI's objects) into the model's prompt text."""
        if self.chat_template is None:
            raise TokenizerError("this tokenizer has no chat template; send a plain completion prompt instead")
        return self._compiled_chat_template().render(messages, add_generation_prompt=add_generation_prompt, tools=tools)

    def _compiled_chat_template(self) -> ChatTemplate:
        """Compiled once per template source: compiling took 11 ms, seven times rendering a 1,000-token prompt."""
        source = self.chat_template
        compiled = self._chat_template_compiled
        if compiled is None or compiled[0] != source:
            compiled = (source, ChatTemplate(source, bos_token=self.bos_token or "", eos_token=self.eos_token))
            self._chat_template_compiled = compiled
        return compiled[1]

    def encode_chat(self, messages: Sequence[Message], add_generation_prompt: bool = True) -> list[int]:
        return self.encode(self.apply_chat_template(messages, add_generation_prompt))

    @cached_property
    def _token_bytes(self) -> list[bytes] | None:
        """Each id's bytes when the decoder is byte-level (exact streaming); None otherwise."""
        decoder = json.loads(self.backend.to_str()).get("decoder") or {}
        if decoder.get("type") != "ByteLevel":
            return None
        tokens = [self.backend.id_to_token(i) for i in range(self.vocab_size)]
        return byte_level_token_bytes(tokens)

    def detokenizer(self, skip_special_tokens: bool = False) -> IncrementalDetokenizer:
        """A fresh streaming detokenizer: push ids, receive the text they add."""
        skipped = self.special_token_ids if skip_special_tokens else frozenset()
        return IncrementalDetokenizer(self.decode, self._token_bytes, skipped, skip_special_tokens)


def _read_tokenizer_config(directory: Path) -> dict[str, Any]:
    path = directory / TOKENIZER_CONFIG_NAME
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise TokenizerError(f"{path} is not valid JSON: {error}") from None


def _token_text(value: Any) -> str | None:
    """tokenizer_config.json writes a token as a string or as {"content": ...}."""
    if isinstance(value, dict):
        return value.get("content")
    return value
