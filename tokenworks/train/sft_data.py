"""SFT data: chat JSONL (OpenAI `messages`) -> token ids with an assistant-only loss mask -> packed rows.

Each conversation is rendered with the tokenizer's own chat template. The text of assistant
turn i is what `render(messages[:i+1])` adds after `render(messages[:i], add_generation_prompt)`:
its content and the end-of-turn token, never the `<|im_start|>assistant\\n` header that the
prompt already holds at inference. Only those tokens carry loss. Segments are tokenized one
by one, exactly as the prompt will be at inference (the header ends a prompt's encoding).

Packing: conversations are placed whole into rows of `context + 1` tokens (first fit, in a
seeded order), the rest of a row padded with loss-free padding, so no conversation is cut
at a row boundary. Longer conversations are truncated to the row, and counted.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tokenworks.errors import TokenizerError, TrainError
from tokenworks.model.chat_template import normalize_message
from tokenworks.model.tokenizer import IM_END, Tokenizer
from tokenworks.train.data import IGNORE_INDEX

MAX_REPORTED_ERRORS = 5


@dataclass(slots=True)
class Example:
    """One conversation as token ids and, per id, whether it is a training target."""

    ids: list[int]
    trainable: list[bool]


def read_chat_jsonl(path: Path) -> list[list[dict[str, Any]]]:
    """Every line's `messages`, checked; all bad lines are reported together with their numbers."""
    if not path.is_file():
        raise TrainError(f"chat data {path} not found")
    conversations: list[list[dict[str, Any]]] = []
    errors: list[str] = []
    with path.open(encoding="utf-8", errors="strict") as file:
        try:
            lines = list(file)
        except UnicodeDecodeError as error:
            raise TrainError(f"{path} is not UTF-8 text: {error}") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            conversations.append(_messages_of(line))
        except ValueError as error:
            errors.append(f"line {number}: {error}")
    if errors:
        shown = "; ".join(errors[:MAX_REPORTED_ERRORS])
        more = f" (and {len(errors) - MAX_REPORTED_ERRORS} more)" if len(errors) > MAX_REPORTED_ERRORS else ""
        raise TrainError(f"{path} has {len(errors)} invalid line(s): {shown}{more}")
    if not conversations:
        raise TrainError(f"{path} holds no conversations: write one JSON object with 'messages' per line")
    return conversations


def _messages_of(line: str) -> list[dict[str, Any]]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise ValueError(f"not valid JSON ({error.msg} at column {error.colno})") from None
    if not isinstance(record, dict) or not isinstance(record.get("messages"), list):
        raise ValueError('expected an object with a "messages" list')
    if not record["messages"]:
        raise ValueError('"messages" is empty')
    try:
        messages = [normalize_message(m, i) for i, m in enumerate(record["messages"])]
    except TokenizerError as error:
        raise ValueError(str(error)) from None
    if not any(m["role"] == "assistant" for m in messages):
        raise ValueError("no assistant message, so nothing to train on")
    return messages


def tokenize_conversation(tokenizer: Tokenizer, messages: Sequence[dict[str, Any]]) -> Example:
    """Token ids of the rendered conversation, with assistant replies (and their end token) trainable."""
    end_token = IM_END if tokenizer.backend.token_to_id(IM_END) is not None else tokenizer.eos_token
    segments: list[tuple[str, bool]] = []
    rendered = ""
    for i, message in enumerate(messages):
        full = tokenizer.apply_chat_template(messages[: i + 1], add_generation_prompt=False)
        if message["role"] == "assistant":
            prompt = tokenizer.apply_chat_template(messages[:i], add_generation_prompt=True) if i else ""
            if not i:  # a leading assistant turn: its header is whatever precedes the content
                prompt = full[: full.find(message["content"])] if message["content"] else full
            if not (prompt.startswith(rendered) and full.startswith(prompt)):
                raise TrainError("the chat template does not render conversations as growing prefixes")
            reply = full[len(prompt) :]
            # Train on the reply through its end token; whitespace the template adds after it is not generated.
            cut = reply.rfind(end_token)
            cut = len(reply) if cut < 0 else cut + len(end_token)
            segments += [(prompt[len(rendered) :], False), (reply[:cut], True), (reply[cut:], False)]
        else:
            if not full.startswith(rendered):
                raise TrainError("the chat template does not render conversations as growing prefixes")
            segments.append((full[len(rendered) :], False))
        rendered = full
    ids: list[int] = []
    trainable: list[bool] = []
    for text, train in segments:
        if text:
            piece = tokenizer.encode(text)
            ids += piece
            trainable += [train] * len(piece)
    return Example(ids, trainable)


@dataclass(slots=True)
class PackedRows:
    """Rows of packed conversations: ids (N, T + 1) and a loss mask for the targets (N, T)."""

    ids: torch.Tensor
    target_mask: torch.Tensor
    truncated: int  # conversations longer than a row, cut to fit

    def __len__(self) -> int:
        return len(self.ids)


def pack(examples: Sequence[Example], context: int, pad_id: int, seed: int = 0) -> PackedRows:
    """First-fit packing of whole conversations into rows of `context + 1` tokens."""
    width = context + 1
    order = np.random.Generator(np.random.PCG64(seed)).permutation(len(examples))
    rows: list[list[int]] = []
    masks: list[list[bool]] = []
    truncated = 0
    for index in order:
        example = examples[index]
        ids, trainable = example.ids[:width], example.trainable[:width]
        truncated += len(example.ids) > width
        # First row with room; a conversation's first token is never a target (nothing precedes it).
        row = next((r for r in range(len(rows)) if len(rows[r]) + len(ids) <= width), None)
        if row is None:
            rows.append([])
            masks.append([])
            row = len(rows) - 1
        rows[row] += ids
        masks[row] += [False, *trainable[1:]]
    ids_tensor = torch.full((len(rows), width), pad_id, dtype=torch.int64)
    mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for r, (row, row_mask) in enumerate(zip(rows, masks, strict=True)):
        ids_tensor[r, : len(row)] = torch.tensor(row, dtype=torch.int64)
        mask[r, : len(row)] = torch.tensor(row_mask, dtype=torch.bool)
    return PackedRows(ids_tensor, mask[:, 1:], truncated)


def targets_of(rows: torch.Tensor, target_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets) with IGNORE_INDEX wherever the target is not an assistant token."""
    inputs, targets = rows[:, :-1], rows[:, 1:].clone()
    targets[~target_mask] = IGNORE_INDEX
    return inputs, targets


class RowSampler:
    """Epochs over packed rows in a seeded order per epoch; `state_dict()` resumes it exactly."""

    def __init__(self, rows: PackedRows, seed: int, rank: int = 0, world_size: int = 1) -> None:
        if len(rows) == 0:
            raise TrainError("the chat data packs into no rows")
        self.rows, self.seed = rows, seed
        self.rank, self.world_size = rank, world_size
        self.epoch, self.position = 0, 0

    def _order(self) -> np.ndarray:
        return np.random.Generator(np.random.PCG64([self.seed, self.epoch])).permutation(len(self.rows))

    def next_batch(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This process's slice of the next global batch, wrapping into the next epoch as needed."""
        picked: list[int] = []
        order = self._order()
        while len(picked) < batch_size * self.world_size:
            if self.position == len(order):
                self.epoch, self.position = self.epoch + 1, 0
                order = self._order()
            picked.append(int(order[self.position]))
            self.position += 1
        mine = picked[self.rank * batch_size : (self.rank + 1) * batch_size]
        return targets_of(self.rows.ids[mine], self.rows.target_mask[mine])

    @property
    def epochs_done(self) -> float:
        return self.epoch + self.position / len(self.rows)

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.position = state["epoch"], state["position"]


def sft_eval_batches(rows: PackedRows) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each packed validation row as its own (1, T) evaluation window."""
    return [targets_of(rows.ids[i : i + 1], rows.target_mask[i : i + 1]) for i in range(len(rows))]
