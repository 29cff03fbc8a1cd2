"""What a benchmark sends: request specifications, reproducible from one seed.

Four kinds of workload: synthetic prompts drawn from input and output length distributions;
shared-prefix (K system prompts x M questions, which exercises prefix caching); multi-turn
sessions, whose later turns carry the replies actually received; and a JSONL file of prompts
or OpenAI messages. Synthetic text has exactly the asked number of tokens under the endpoint's
tokenizer when one is given (`ModelTokenizer`); without one, it has that many words
(`WordCounter`), and the counts are labelled approximate (`Workload.exact_token_counts`).
"""

from __future__ import annotations

import itertools
import json
import math
import random
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from tokenworks.bench.prompts import PromptText, PromptTokenizer, WordCounter
from tokenworks.errors import BenchError

Api = Literal["chat", "completions"]
WorkloadKind = Literal["synthetic", "shared-prefix", "multi-turn", "jsonl"]
WORKLOAD_KINDS = ("synthetic", "shared-prefix", "multi-turn", "jsonl")
APIS = ("chat", "completions")
LENGTH_FORMS = "N (fixed), LOW:HIGH (uniform, inclusive) or normal:MEAN,STD"


@dataclass(frozen=True, slots=True)
class LengthDistribution:
    """A token count per request: fixed, uniform over an inclusive range, or normal (clipped to >= 1)."""

    kind: Literal["fixed", "uniform", "normal"]
    a: float  # fixed: the count; uniform: the low end; normal: the mean
    b: float  # fixed: the count; uniform: the high end; normal: the standard deviation

    @classmethod
    def parse(cls, text: str | int) -> LengthDistribution:
        raw = str(text).strip()
        if raw.startswith("normal:"):
            mean_text, comma, std_text = raw.removeprefix("normal:").partition(",")
            if not comma:
                _bad_length(raw, "normal needs a mean and a standard deviation, as normal:128,32")
            mean, std = _number(raw, mean_text, "mean"), _number(raw, std_text, "standard deviation")
            if mean < 1 or std < 0:
                _bad_length(raw, "the mean must be >= 1 and the standard deviation >= 0")
            return cls("normal", mean, std)
        if ":" in raw:
            low_text, _, high_text = raw.partition(":")
            low, high = _count(raw, low_text, "low end"), _count(raw, high_text, "high end")
            if low > high:
                _bad_length(raw, f"the low end {low} is above the high end {high}")
            return cls("uniform", low, high)
        value = _count(raw, raw, "count")
        return cls("fixed", value, value)

    def sample(self, rng: random.Random) -> int:
        if self.kind == "fixed":
            return int(self.a)
        if self.kind == "uniform":
            return rng.randint(int(self.a), int(self.b))
        return max(1, round(rng.gauss(self.a, self.b)))

    @property
    def mean(self) -> float:
        return (self.a + self.b) / 2 if self.kind != "normal" else self.a

    def __str__(self) -> str:
        if self.kind == "fixed":
            return str(int(self.a))
        if self.kind == "uniform":
            return f"{int(self.a)}:{int(self.b)}"
        return f"normal:{self.a:g},{self.b:g}"


def _bad_length(raw: str, problem: str) -> None:
    raise BenchError(f"bad length {raw!r}: {problem}; use {LENGTH_FORMS}")


def _count(raw: str, part: str, what: str) -> int:
    try:
        value = int(part)
    except ValueError:
        value = 0
    if value < 1:
        _bad_length(raw, f"the {what} {part!r} is not a whole number >= 1")
    return value


def _number(raw: str, part: str, what: str) -> float:
    try:
        value = float(part)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        _bad_length(raw, f"the {what} {part!r} is not a number")
    return value


@dataclass(slots=True)
class RequestSpec:
    """One request to send: a completion prompt or chat messages, and the output length asked for."""

    index: int  # position in the workload (multi-turn: session * turns + turn)
    api: Api
    prompt: str | None = None  # completions
    messages: list[dict[str, Any]] | None = None  # chat
    max_tokens: int | None = None  # None: the server decides
    session: int | None = None
    turn: int | None = None
    input_tokens_hint: int | None = None  # the prompt's tokens by the workload's tokenizer (content only)


@dataclass(slots=True)
class WorkloadOptions:
    """A workload as the CLI flags describe it; lengths may be given as text ("64:256")."""

    kind: WorkloadKind = "synthetic"  # --workload
    api: Api = "chat"  # --api
    input_tokens: LengthDistribution | str = "128"  # --input-tokens (shared-prefix: the question)
    output_tokens: LengthDistribution | str | None = "128"  # --output-tokens; None: the server decides
    num_prefixes: int = 4  # --num-prefixes (K)
    questions_per_prefix: int = 8  # --questions-per-prefix (M)
    prefix_tokens: int = 512  # --prefix-tokens
    sessions: int = 8  # --sessions
    turns: int = 4  # --turns
    input_file: str | Path | None = None  # --input-file (jsonl)
    temperature: float | None = None  # --temperature; None: not sent, the server's default (usually 1)

    def __post_init__(self) -> None:
        self._parse_lengths()

    def _parse_lengths(self) -> None:
        if isinstance(self.input_tokens, str | int):
            self.input_tokens = LengthDistribution.parse(self.input_tokens)
        if isinstance(self.output_tokens, str | int):
            self.output_tokens = LengthDistribution.parse(self.output_tokens)

    def validate(self) -> None:
        self._parse_lengths()  # a length set as text after construction
        if self.kind not in WORKLOAD_KINDS:
            raise BenchError(f"unknown workload {self.kind!r}; use one of {', '.join(WORKLOAD_KINDS)}")
        if self.api not in APIS:
            raise BenchError(f"unknown API {self.api!r}; use chat or completions")
        for flag, value in (
            ("--num-prefixes", self.num_prefixes),
            ("--questions-per-prefix", self.questions_per_prefix),
            ("--prefix-tokens", self.prefix_tokens),
            ("--sessions", self.sessions),
            ("--turns", self.turns),
        ):
            if value < 1:
                raise BenchError(f"{flag} must be at least 1, got {value}")
        if self.temperature is not None and not 0.0 <= self.temperature <= 100.0:
            raise BenchError(f"--temperature must be between 0 and 100, got {self.temperature}")
        if self.kind == "multi-turn" and self.api != "chat":
            raise BenchError("multi-turn sessions send the conversation as messages: use --api chat")
        if self.kind == "jsonl" and self.input_file is None:
            raise BenchError("the jsonl workload reads its prompts from a file: give --input-file")


class Workload(ABC):
    """An endless, deterministic sequence of request specs (a file's lines repeat).

    For multi-turn sessions the sequence holds each session's first turn; `next_turn` builds
    the following one from the reply received, at send time.
    """

    kind: WorkloadKind

    def __init__(self, options: WorkloadOptions, seed: int, tokenizer: PromptTokenizer) -> None:
        self.options, self.seed, self.tokenizer = options, seed, tokenizer
        self.text = PromptText(tokenizer)

    @property
    def exact_token_counts(self) -> bool:
        return self.tokenizer.exact

    @property
    def size(self) -> int | None:
        """Requests in one pass (shared-prefix K*M, sessions S*T, the file's lines); None: endless."""
        return None

    def __iter__(self) -> Iterator[RequestSpec]:
        return self._specs()

    def take(self, count: int) -> list[RequestSpec]:
        return list(itertools.islice(self, count))

    def next_turn(self, spec: RequestSpec, reply: str) -> RequestSpec | None:
        return None

    @abstractmethod
    def _specs(self) -> Iterator[RequestSpec]:
        """Each kind's endless sequence of specs."""

    def _max_tokens(self, rng: random.Random) -> int | None:
        output = self.options.output_tokens
        return output.sample(rng) if output is not None else None

    def _spec(self, index: int, text: str, hint: int, max_tokens: int | None, system: str | None = None) -> RequestSpec:
        if self.options.api == "completions":
            return RequestSpec(
                index, "completions", prompt=(system or "") + text, max_tokens=max_tokens, input_tokens_hint=hint
            )
        messages = [{"role": "user", "content": text}]
        if system is not None:
            messages.insert(0, {"role": "system", "content": system})
        return RequestSpec(index, "chat", messages=messages, max_tokens=max_tokens, input_tokens_hint=hint)


class SyntheticWorkload(Workload):
    kind = "synthetic"

    def _specs(self) -> Iterator[RequestSpec]:
        rng = random.Random(self.seed)
        for index in itertools.count():
            text, hint = self.text.make(self.options.input_tokens.sample(rng), rng)
            yield self._spec(index, text, hint, self._max_tokens(rng))


class SharedPrefixWorkload(Workload):
    """K system prompts, each followed by M different questions, in a seeded interleaved order."""

    kind = "shared-prefix"

    @property
    def size(self) -> int:
        return self.options.num_prefixes * self.options.questions_per_prefix

    def _specs(self) -> Iterator[RequestSpec]:
        options = self.options
        rng = random.Random(self.seed)
        prefixes = [self.text.make(options.prefix_tokens, rng) for _ in range(options.num_prefixes)]
        index = 0
        while True:  # each pass asks every prefix M new questions
            order = [k for k in range(options.num_prefixes) for _ in range(options.questions_per_prefix)]
            rng.shuffle(order)
            for k in order:
                prefix, prefix_count = prefixes[k]
                question, question_count = self.text.make(options.input_tokens.sample(rng), rng)
                yield self._spec(index, question, prefix_count + question_count, self._max_tokens(rng), system=prefix)
                index += 1


class MultiTurnWorkload(Workload):
    """S sessions of T turns; turn t's messages are the whole conversation so far, replies included.

    Each turn's new user text and output length come from a seed of (seed, session, turn), so
    they do not depend on the order in which concurrent sessions happen to advance.
    """

    kind = "multi-turn"

    @property
    def size(self) -> int:
        return self.options.sessions * self.options.turns

    def _turn(self, session: int, turn: int) -> tuple[str, int, int | None]:
        rng = random.Random(f"{self.seed}:{session}:{turn}")
        text, count = self.text.make(self.options.input_tokens.sample(rng), rng)
        return text, count, self._max_tokens(rng)

    def _specs(self) -> Iterator[RequestSpec]:
        for session in itertools.count():
            text, count, max_tokens = self._turn(session, 0)
            spec = self._spec(session * self.options.turns, text, count, max_tokens)
            spec.session, spec.turn = session, 0
            yield spec

    def next_turn(self, spec: RequestSpec, reply: str) -> RequestSpec | None:
        turn = spec.turn + 1
        if turn >= self.options.turns:
            return None
        text, count, max_tokens = self._turn(spec.session, turn)
        messages = [*spec.messages, {"role": "assistant", "content": reply}, {"role": "user", "content": text}]
        hint = spec.input_tokens_hint + self.tokenizer.count(reply) + count
        return replace(
            spec, index=spec.index + 1, messages=messages, max_tokens=max_tokens, turn=turn, input_tokens_hint=hint
        )


class FileWorkload(Workload):
    """A JSONL file: one {"prompt": str} or {"messages": [...]} per line, optional "max_tokens"."""

    kind = "jsonl"

    def __init__(self, options: WorkloadOptions, seed: int, tokenizer: PromptTokenizer) -> None:
        super().__init__(options, seed, tokenizer)
        self.entries = read_jsonl(Path(options.input_file), options.api)

    @property
    def size(self) -> int:
        return len(self.entries)

    def _specs(self) -> Iterator[RequestSpec]:
        rng = random.Random(self.seed)
        for index, (prompt, messages, max_tokens) in enumerate(itertools.cycle(self.entries)):
            if max_tokens is None:
                max_tokens = self._max_tokens(rng)
            if messages is not None:
                hint = self.tokenizer.count_chat(messages)
                yield RequestSpec(index, "chat", messages=messages, max_tokens=max_tokens, input_tokens_hint=hint)
            elif self.options.api == "chat":
                hint = self.tokenizer.count(prompt)
                messages = [{"role": "user", "content": prompt}]
                yield RequestSpec(index, "chat", messages=messages, max_tokens=max_tokens, input_tokens_hint=hint)
            else:
                hint = self.tokenizer.count(prompt)
                yield RequestSpec(index, "completions", prompt=prompt, max_tokens=max_tokens, input_tokens_hint=hint)


FileEntry = tuple[str | None, list[dict[str, Any]] | None, int | None]  # prompt, messages, max_tokens
_LINE_FORM = 'each line must be {"prompt": "..."} or {"messages": [{"role": ..., "content": ...}]}, with an optional "max_tokens"'


def read_jsonl(path: Path, api: Api) -> list[FileEntry]:
    """Every entry of a prompts file, checked; a bad line raises BenchError naming it."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise BenchError(f"cannot read the input file {path}: {error}") from None
    entries = []
    for number, line in enumerate(lines, start=1):
        if line.strip():
            entries.append(_parse_line(path, number, line, api))
    if not entries:
        raise BenchError(f"the input file {path} has no prompts; {_LINE_FORM}")
    return entries


def _parse_line(path: Path, number: int, line: str, api: Api) -> FileEntry:
    def bad(problem: str) -> BenchError:
        return BenchError(f"{path}, line {number}: {problem}; {_LINE_FORM}")

    try:
        entry = json.loads(line)
    except json.JSONDecodeError as error:
        raise bad(f"not valid JSON ({error.msg} at column {error.colno})") from None
    if not isinstance(entry, dict):
        raise bad(f"a JSON {type(entry).__name__}, not an object")
    prompt, messages, max_tokens = entry.get("prompt"), entry.get("messages"), entry.get("max_tokens")
    if (prompt is None) == (messages is None):
        raise bad('give exactly one of "prompt" and "messages"')
    if prompt is not None and (not isinstance(prompt, str) or not prompt):
        raise bad('"prompt" must be a non-empty string')
    if messages is not None:
        if not isinstance(messages, list) or not messages:
            raise bad('"messages" must be a non-empty list')
        for position, message in enumerate(messages):
            if not isinstance(message, dict) or not isinstance(message.get("role"), str) or "content" not in message:
                raise bad(f'message {position} must be an object with "role" and "content"')
        if api == "completions":
            raise bad("messages need the chat API: use --api chat")
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1):
        raise bad(f'"max_tokens" must be a whole number >= 1, got {max_tokens!r}')
    return prompt, messages, max_tokens


_KINDS: dict[str, type[Workload]] = {
    "synthetic": SyntheticWorkload,
    "shared-prefix": SharedPrefixWorkload,
    "multi-turn": MultiTurnWorkload,
    "jsonl": FileWorkload,
}


def build_workload(options: WorkloadOptions, seed: int = 0, tokenizer: PromptTokenizer | None = None) -> Workload:
    """The workload the options describe; without a tokenizer, token counts are words (approximate)."""
    options.validate()
    return _KINDS[options.kind](options, seed, tokenizer if tokenizer is not None else WordCounter())
