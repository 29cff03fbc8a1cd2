"""Workloads: length distributions, seeded reproducibility, exact token counts, the four kinds."""

from __future__ import annotations

import json
import random
import time
from collections import Counter

import pytest

from tokenworks.bench.prompts import WORDS, ModelTokenizer, PromptText, WordCounter
from tokenworks.bench.workloads import LENGTH_FORMS, LengthDistribution, WorkloadOptions, build_workload
from tokenworks.errors import BenchError


@pytest.fixture(scope="module")
def prompt_tokenizer(tokenizer) -> ModelTokenizer:
    return ModelTokenizer(tokenizer)


def content(spec) -> str:
    return spec.prompt if spec.api == "completions" else spec.messages[-1]["content"]


def test_length_distribution_forms():
    assert LengthDistribution.parse("128") == LengthDistribution("fixed", 128, 128)
    assert LengthDistribution.parse(" 64:256 ") == LengthDistribution("uniform", 64, 256)
    assert LengthDistribution.parse("normal:128,32") == LengthDistribution("normal", 128.0, 32.0)
    assert [str(LengthDistribution.parse(text)) for text in ("128", "64:256", "normal:128,32")] == [
        "128",
        "64:256",
        "normal:128,32",
    ]


def test_length_distribution_samples():
    rng = random.Random(0)
    assert {LengthDistribution.parse("7").sample(rng) for _ in range(100)} == {7}
    uniform = Counter(LengthDistribution.parse("3:6").sample(rng) for _ in range(4000))
    assert sorted(uniform) == [3, 4, 5, 6]  # both ends included
    assert all(900 < n < 1100 for n in uniform.values())
    normal = [LengthDistribution.parse("normal:128,32").sample(rng) for _ in range(20000)]
    assert abs(sum(normal) / len(normal) - 128) < 1.0
    assert all(isinstance(n, int) for n in normal)
    clipped = [LengthDistribution.parse("normal:2,50").sample(rng) for _ in range(2000)]
    assert min(clipped) == 1


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("0", "the count '0' is not a whole number >= 1"),
        ("abc", "the count 'abc' is not a whole number >= 1"),
        ("", "the count '' is not a whole number >= 1"),
        ("10:5", "the low end 10 is above the high end 5"),
        ("1:2:3", "the high end '2:3' is not a whole number >= 1"),
        ("x:5", "the low end 'x' is not a whole number >= 1"),
        ("normal:128", "normal needs a mean and a standard deviation"),
        ("normal:x,3", "the mean 'x' is not a number"),
        ("normal:128,-1", "the standard deviation >= 0"),
    ],
)
def test_length_distribution_errors(text, problem):
    with pytest.raises(BenchError) as caught:
        LengthDistribution.parse(text)
    assert problem in str(caught.value)
    assert LENGTH_FORMS in str(caught.value)


def test_same_seed_same_specs_other_seed_other_specs(prompt_tokenizer):
    options = WorkloadOptions(input_tokens="8:64", output_tokens="normal:32,8")
    first = build_workload(options, seed=3, tokenizer=prompt_tokenizer).take(50)
    again = build_workload(options, seed=3, tokenizer=prompt_tokenizer).take(50)
    other = build_workload(options, seed=4, tokenizer=prompt_tokenizer).take(50)
    assert first == again
    assert [content(s) for s in first] != [content(s) for s in other]
    assert [s.max_tokens for s in first] != [s.max_tokens for s in other]
    assert [s.index for s in first] == list(range(50))


@pytest.mark.parametrize("length", [1, 2, 7, 128, 300])
def test_synthetic_prompts_have_the_exact_token_count(prompt_tokenizer, length):
    for api in ("chat", "completions"):
        options = WorkloadOptions(api=api, input_tokens=str(length))
        specs = build_workload(options, seed=1, tokenizer=prompt_tokenizer).take(40)
        assert [prompt_tokenizer.count(content(s)) for s in specs] == [length] * 40
        assert [s.input_tokens_hint for s in specs] == [length] * 40
        assert [s.max_tokens for s in specs] == [128] * 40


def test_exact_counts_when_word_pieces_do_not_add_up():
    """A BPE without word splitting merges across spaces: the repair path cuts at a token boundary."""
    from tokenizers import Tokenizer as Backend
    from tokenizers import decoders, models, pre_tokenizers, trainers

    from tokenworks.model.tokenizer import Tokenizer

    backend = Backend(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    rng = random.Random(0)
    corpus = [" ".join(rng.choices(WORDS, k=200)) for _ in range(50)]
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(
        vocab_size=600, special_tokens=["<|endoftext|>"], initial_alphabet=alphabet, show_progress=False
    )
    backend.train_from_iterator(corpus, trainer)
    counter = ModelTokenizer(Tokenizer(backend, chat_template=None))
    text = PromptText(counter)
    assert not text.counts_add_up  # no split at the spaces: every text is counted
    assert text.fillers == []  # no one-token words: the pieces alone cannot hit a count
    pieces = [text.pieces[i] for i in range(0, 60, 3)]
    assert counter.count("".join(pieces)) != sum(counter.count(p) for p in pieces)
    for length in (1, 5, 17, 64, 128, 300):
        made, count = text.make(length, rng)
        assert (count, counter.count(made)) == (length, length)


def test_words_a_tokenizer_provably_encodes_apart_are_not_counted_again(prompt_tokenizer):
    """Byte-level BPE with GPT-2's split encodes a text of spaced words word by word: the prompts
    skip the encode that checks their count, and are the same prompts with the same counts."""
    proven, checked = PromptText(prompt_tokenizer), PromptText(prompt_tokenizer)
    assert proven.counts_add_up and proven.fillers
    checked.counts_add_up = False
    for seed in range(3):
        lengths = random.Random(seed).choices(range(1, 400), k=60)
        proven_rng, checked_rng = random.Random(seed), random.Random(seed)
        made = [proven.make(length, proven_rng) for length in lengths]
        assert made == [checked.make(length, checked_rng) for length in lengths]
        assert [count for _, count in made] == [prompt_tokenizer.count(text) for text, _ in made] == lengths


def test_what_could_join_words_turns_the_proof_off(prompt_tokenizer):
    from tokenizers import Tokenizer as Backend
    from tokenizers import normalizers

    from tokenworks.model.tokenizer import Tokenizer

    def variant(change) -> ModelTokenizer:
        backend = Backend.from_str(prompt_tokenizer.tokenizer.backend.to_str())
        change(backend)
        return ModelTokenizer(Tokenizer(backend, chat_template=None))

    pieces = PromptText(prompt_tokenizer).pieces
    assert prompt_tokenizer.encodes_apart(pieces)
    assert not prompt_tokenizer.encodes_apart([" The", " end"])  # not lowercase ASCII words
    assert not variant(lambda b: setattr(b, "normalizer", normalizers.Lowercase())).encodes_apart(pieces)
    assert not variant(lambda b: b.add_tokens(["the of"])).encodes_apart(pieces)  # an added token could match
    assert variant(lambda b: b.add_tokens(["<tool>"])).encodes_apart(pieces)  # this one never can
    assert not variant(lambda b: b.enable_truncation(64)).encodes_apart(pieces)
    assert WordCounter().encodes_apart(pieces) and not WordCounter().encodes_apart(["one", "word"])


def test_synthetic_range_counts_match_their_hint(prompt_tokenizer):
    workload = build_workload(WorkloadOptions(input_tokens="1:400"), seed=2, tokenizer=prompt_tokenizer)
    specs = workload.take(200)
    counts = [prompt_tokenizer.count(content(s)) for s in specs]
    assert counts == [s.input_tokens_hint for s in specs]
    assert min(counts) >= 1 and max(counts) <= 400 and len(set(counts)) > 100
    assert workload.exact_token_counts and workload.size is None


def test_without_a_tokenizer_counts_are_words_and_approximate():
    workload = build_workload(WorkloadOptions(input_tokens="50"), seed=0)
    assert not workload.exact_token_counts
    specs = workload.take(20)
    assert [len(content(s).split()) for s in specs] == [50] * 20
    assert WordCounter().truncate(" a b c d", 2) == " a b"


def test_a_thousand_prompts_build_fast(prompt_tokenizer):
    workload = build_workload(WorkloadOptions(input_tokens="128"), seed=0, tokenizer=prompt_tokenizer)
    start = time.perf_counter()
    specs = workload.take(1000)
    assert time.perf_counter() - start < 1.5
    assert len({content(s) for s in specs}) == 1000


def test_shared_prefix_structure(prompt_tokenizer):
    options = WorkloadOptions(
        kind="shared-prefix", num_prefixes=3, questions_per_prefix=4, prefix_tokens=40, input_tokens="10"
    )
    workload = build_workload(options, seed=5, tokenizer=prompt_tokenizer)
    specs = workload.take(12)
    assert workload.size == 12
    systems = [s.messages[0]["content"] for s in specs]
    assert [m["role"] for m in specs[0].messages] == ["system", "user"]
    assert sorted(Counter(systems).values()) == [4, 4, 4]
    assert {prompt_tokenizer.count(p) for p in systems} == {40}
    assert len({s.messages[1]["content"] for s in specs}) == 12
    assert [s.input_tokens_hint for s in specs] == [50] * 12
    order = [sorted(set(systems)).index(p) for p in systems]
    assert order != sorted(order)  # interleaved, not grouped
    assert build_workload(options, seed=5, tokenizer=prompt_tokenizer).take(12) == specs
    # a second pass asks the same prefixes new questions
    more = workload.take(24)[12:]
    assert {s.messages[0]["content"] for s in more} == set(systems)
    assert not {s.messages[1]["content"] for s in more} & {s.messages[1]["content"] for s in specs}
    options.api = "completions"
    completions = build_workload(options, seed=5, tokenizer=prompt_tokenizer).take(12)
    assert [s.prompt for s in completions] == [
        p + s.messages[1]["content"] for p, s in zip(systems, specs, strict=True)
    ]
    assert [prompt_tokenizer.count(s.prompt) for s in completions] == [50] * 12


def test_multi_turn_next_turn_carries_the_reply(prompt_tokenizer):
    options = WorkloadOptions(kind="multi-turn", sessions=2, turns=3, input_tokens="12", output_tokens="8")
    workload = build_workload(options, seed=9, tokenizer=prompt_tokenizer)
    assert workload.size == 6
    first = workload.take(2)
    assert [(s.session, s.turn, s.index) for s in first] == [(0, 0, 0), (1, 0, 3)]
    second = workload.next_turn(first[0], " the first reply")
    assert (second.session, second.turn, second.index, second.max_tokens) == (0, 1, 1, 8)
    assert [m["role"] for m in second.messages] == ["user", "assistant", "user"]
    assert second.messages[:2] == [*first[0].messages, {"role": "assistant", "content": " the first reply"}]
    assert prompt_tokenizer.count(second.messages[2]["content"]) == 12
    assert second.input_tokens_hint == 24 + prompt_tokenizer.count(" the first reply")
    third = workload.next_turn(second, " another")
    assert third.messages[3] == {"role": "assistant", "content": " another"} and third.turn == 2
    assert workload.next_turn(third, " last") is None
    # a turn's new text depends on (seed, session, turn) only, not on the order sessions advance in
    later = build_workload(options, seed=9, tokenizer=prompt_tokenizer)
    assert later.next_turn(later.take(1)[0], " the first reply") == second
    with pytest.raises(BenchError, match="use --api chat"):
        build_workload(WorkloadOptions(kind="multi-turn", api="completions"), seed=0)


def write_lines(path, lines: list[str]):
    path.write_text("\n".join(lines) + "\n")
    return path


def test_jsonl_prompts_and_messages(tmp_path, prompt_tokenizer):
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there"}]
    path = write_lines(
        tmp_path / "prompts.jsonl",
        [json.dumps({"prompt": "one two three", "max_tokens": 7}), "", json.dumps({"messages": messages})],
    )
    workload = build_workload(WorkloadOptions(kind="jsonl", input_file=path, output_tokens="16"), seed=0)
    assert workload.size == 2
    specs = workload.take(5)  # the file repeats
    assert [s.index for s in specs] == [0, 1, 2, 3, 4]
    assert specs[0].messages == [{"role": "user", "content": "one two three"}]
    assert (specs[0].max_tokens, specs[0].input_tokens_hint) == (7, 3)
    assert (specs[1].messages, specs[1].max_tokens, specs[1].input_tokens_hint) == (messages, 16, 4)
    assert [s.messages for s in specs[2:4]] == [s.messages for s in specs[:2]]
    path = write_lines(tmp_path / "plain.jsonl", ['{"prompt": "a b"}'])
    options = WorkloadOptions(kind="jsonl", api="completions", input_file=path, output_tokens=None)
    plain = build_workload(options, seed=0, tokenizer=prompt_tokenizer).take(1)[0]
    assert (plain.api, plain.prompt, plain.max_tokens) == ("completions", "a b", None)
    assert plain.input_tokens_hint == prompt_tokenizer.count("a b")


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("{not json", "line 2: not valid JSON"),
        ("[1, 2]", "line 2: a JSON list, not an object"),
        ('{"text": "x"}', 'line 2: give exactly one of "prompt" and "messages"'),
        ('{"prompt": "x", "messages": []}', 'line 2: give exactly one of "prompt" and "messages"'),
        ('{"prompt": ""}', 'line 2: "prompt" must be a non-empty string'),
        ('{"messages": []}', 'line 2: "messages" must be a non-empty list'),
        ('{"messages": [{"content": "x"}]}', 'line 2: message 0 must be an object with "role" and "content"'),
        ('{"prompt": "x", "max_tokens": 0}', 'line 2: "max_tokens" must be a whole number >= 1, got 0'),
        ('{"prompt": "x", "max_tokens": "9"}', "line 2: \"max_tokens\" must be a whole number >= 1, got '9'"),
    ],
)
def test_jsonl_bad_lines_are_named(tmp_path, line, problem):
    path = write_lines(tmp_path / "bad.jsonl", ['{"prompt": "fine"}', line])
    with pytest.raises(BenchError) as caught:
        build_workload(WorkloadOptions(kind="jsonl", input_file=path), seed=0)
    assert f"{path}, {problem}" in str(caught.value)
    assert '{"prompt": "..."}' in str(caught.value)


def test_jsonl_file_level_errors(tmp_path):
    with pytest.raises(BenchError, match="cannot read the input file"):
        build_workload(WorkloadOptions(kind="jsonl", input_file=tmp_path / "missing.jsonl"), seed=0)
    with pytest.raises(BenchError, match="has no prompts"):
        build_workload(WorkloadOptions(kind="jsonl", input_file=write_lines(tmp_path / "e.jsonl", [""])), seed=0)
    with pytest.raises(BenchError, match="line 1: messages need the chat API"):
        path = write_lines(tmp_path / "m.jsonl", ['{"messages": [{"role": "user", "content": "x"}]}'])
        build_workload(WorkloadOptions(kind="jsonl", api="completions", input_file=path), seed=0)
    with pytest.raises(BenchError, match="give --input-file"):
        build_workload(WorkloadOptions(kind="jsonl"), seed=0)


def test_bad_options_are_named(tmp_path):
    with pytest.raises(BenchError, match="unknown workload 'chatty'"):
        build_workload(WorkloadOptions(kind="chatty"), seed=0)
    with pytest.raises(BenchError, match="--num-prefixes must be at least 1, got 0"):
        build_workload(WorkloadOptions(kind="shared-prefix", num_prefixes=0), seed=0)
    with pytest.raises(BenchError, match="bad length '0:4'"):
        WorkloadOptions(output_tokens="0:4")
    with pytest.raises(BenchError, match="cannot load the tokenizer"):
        ModelTokenizer.load(tmp_path)
