"""Synthetic English-like text for the ingest benchmarks: documents, edited copies at a known
Jaccard, and junk that the Gopher rules drop.

Standard library and numpy only: `warc_corpus.py` imports it in datatrove's virtualenv too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

_WORD = re.compile(r"\w+")

FUNCTION_WORDS = str.split(
    "the of and to a in is that for it as was with be by on not he this are or his from at which but have an "
    "they you were her she there been one all we their has would when if so no will more can its into than "
    "about other some what only also then them these two may any our could after first very where most over"
)
ONSETS = str.split(
    "b c d f g h j k l m n p r s t v w y z bl br ch cl cr dr fl fr gl gr pl pr sc sh sk sl sp st str th tr wh"
)
VOWELS = str.split("a e i o u a e i o u ea ee ai ou oo ie io")
CODAS = ["", "", "", "", "", "", *str.split("n r s t l m nd nt st rd ck ng sh th")]
PUNCT_END = (".", ".", ".", ".", ".", ".", ".", "?", "!")


@dataclass
class Vocabulary:
    words: list[str]
    cumulative: np.ndarray  # cumulative sampling probabilities

    def sample(self, rng: np.random.Generator, count: int) -> list[str]:
        indices = np.searchsorted(self.cumulative, rng.random(count), side="right")
        return [self.words[i] for i in np.minimum(indices, len(self.words) - 1)]


def make_vocabulary(rng: np.random.Generator, size: int) -> Vocabulary:
    """Function words at English-like frequencies, then `size` made-up content words with a
    Zipfian frequency and 1-4 syllables (mean token length near English's ~4.7 characters)."""
    content: list[str] = []
    seen = set(FUNCTION_WORDS)
    while len(content) < size:
        syllables = int(rng.choice([1, 2, 3, 4], p=[0.36, 0.42, 0.17, 0.05]))
        word = "".join(
            ONSETS[rng.integers(len(ONSETS))] * (i == 0 or rng.random() < 0.8)
            + VOWELS[rng.integers(len(VOWELS))]
            + CODAS[rng.integers(len(CODAS))] * (i == syllables - 1 or rng.random() < 0.3)
            for i in range(syllables)
        )
        if 2 <= len(word) <= 14 and word not in seen:
            seen.add(word)
            content.append(word)
    function_weights = 1.0 / np.arange(1, len(FUNCTION_WORDS) + 1) ** 0.9
    content_weights = 1.0 / (np.arange(1, size + 1) + 20) ** 1.0
    weights = np.concatenate(
        [0.42 * function_weights / function_weights.sum(), 0.58 * content_weights / content_weights.sum()]
    )
    return Vocabulary(FUNCTION_WORDS + content, np.cumsum(weights))


Document = list[list[list[str]]]  # paragraphs -> sentences -> words (punctuation attached)


def make_document(rng: np.random.Generator, vocabulary: Vocabulary, words: int) -> Document:
    """About `words` words: an optional title line, then 2-6 sentence paragraphs of 6-22 word sentences."""
    paragraphs: Document = []
    remaining = words
    if rng.random() < 0.3:
        title = [w.capitalize() for w in vocabulary.sample(rng, int(rng.integers(3, 8)))]
        paragraphs.append([title])
        remaining -= len(title)
    paragraph: list[list[str]] = []
    target = int(rng.integers(2, 7))
    while remaining > 0:
        length = min(remaining, int(rng.integers(6, 23)))
        if remaining - length < 4:  # no tiny trailing sentence
            length = remaining
        sentence = vocabulary.sample(rng, length)
        for i in np.flatnonzero(rng.random(length) < 0.012):  # a few numbers
            sentence[i] = str(int(rng.integers(1, 2030)))
        for i in np.flatnonzero(rng.random(length - 1) < 0.07):  # commas
            sentence[i] += ","
        sentence[0] = sentence[0].capitalize()
        sentence[-1] += PUNCT_END[rng.integers(len(PUNCT_END))]
        paragraph.append(sentence)
        remaining -= length
        if len(paragraph) == target or remaining <= 0:
            paragraphs.append(paragraph)
            paragraph, target = [], int(rng.integers(2, 7))
    return paragraphs


def render(document: Document) -> str:
    return "\n\n".join(" ".join(" ".join(sentence) for sentence in paragraph) for paragraph in document)


def word_count(document: Document) -> int:
    return sum(len(sentence) for paragraph in document for sentence in paragraph)


def edit(
    rng: np.random.Generator, vocabulary: Vocabulary, document: Document, edits: int, burst: bool
) -> tuple[Document, int]:
    """A copy with `edits` word substitutions/insertions/deletions: spread over the document, or
    (burst) in one stretch, as when one passage is rewritten. Returns (copy, edits made)."""
    copy = [[list(sentence) for sentence in paragraph] for paragraph in document]
    slots = [(p, s) for p, paragraph in enumerate(copy) for s in range(len(paragraph))]
    sizes = np.array([len(copy[p][s]) for p, s in slots])
    start = int(rng.integers(len(slots)))
    made = 0
    for k in range(edits):
        if burst:  # walk the sentences from a random one on, a few edits each
            p, s = slots[(start + k // 3) % len(slots)]
        else:
            p, s = slots[int(np.searchsorted(np.cumsum(sizes), rng.integers(sizes.sum()), side="right"))]
        sentence = copy[p][s]
        kind = rng.choice(3, p=[0.6, 0.2, 0.2])  # substitute, insert, delete
        if kind == 2 and len(sentence) <= 4:
            kind = 0
        if kind == 0:
            i = int(rng.integers(len(sentence)))
            old, new = sentence[i], vocabulary.sample(rng, 1)[0]
            trail = old[len(old.rstrip(",.?!")) :]
            sentence[i] = (new.capitalize() if i == 0 else new) + trail
        elif kind == 1:
            sentence.insert(int(rng.integers(1, len(sentence))), vocabulary.sample(rng, 1)[0])
        else:
            del sentence[int(rng.integers(1, len(sentence) - 1))]
        made += 1
    return copy, made


def shingles(text: str, n: int) -> set[tuple[str, ...]]:
    """`n`-word shingles of lower-cased \\w+ words (the words both tools shingle on)."""
    words = _WORD.findall(text.lower())
    return {tuple(words[i : i + n]) for i in range(max(len(words) - n + 1, 1))}


def jaccard(first: set, second: set) -> float:
    return len(first & second) / len(first | second) if first or second else 1.0


JUNK_KINDS = ("short", "hashtags", "ellipsis_lines", "numbers", "duplicate_lines", "long_words", "top_ngram")


def make_junk(rng: np.random.Generator, vocabulary: Vocabulary, kind: str) -> str:
    """A document each tool's quality filters must drop, failing one rule by a clear margin."""
    words = int(rng.integers(120, 300))
    if kind == "short":
        return render(make_document(rng, vocabulary, int(rng.integers(10, 40))))
    if kind == "hashtags":
        tokens = vocabulary.sample(rng, words)
        return " ".join(f"#{w}" if i % 4 == 0 else w for i, w in enumerate(tokens))
    if kind == "ellipsis_lines":
        lines = [" ".join(vocabulary.sample(rng, int(rng.integers(12, 20)))) for _ in range(words // 15)]
        return "\n".join(line + ("..." if i % 2 == 0 else ".") for i, line in enumerate(lines))
    if kind == "numbers":
        tokens = vocabulary.sample(rng, words)
        return " ".join(str(int(rng.integers(0, 100000))) if rng.random() < 0.4 else w for w in tokens)
    if kind == "duplicate_lines":
        lines = [" ".join(vocabulary.sample(rng, int(rng.integers(8, 16)))) + "." for _ in range(6)]
        return "\n".join(lines[int(rng.integers(len(lines)))] for _ in range(words // 10))
    if kind == "long_words":
        tokens = vocabulary.sample(rng, words * 3)
        return " ".join("".join(tokens[i : i + 3]) for i in range(0, len(tokens), 3))
    # top_ngram: one phrase makes up a large share of the text
    phrase = " ".join(vocabulary.sample(rng, 2))
    tokens = vocabulary.sample(rng, words)
    return " ".join(phrase if i % 3 == 0 else w for i, w in enumerate(tokens))


def make_copy(
    rng: np.random.Generator,
    vocabulary: Vocabulary,
    document: Document,
    text: str,
    kind: str,
    shingle_words: int,
    threshold: float,
) -> tuple[str, float, float] | None:
    """(copy text, true Jaccard, edited fraction of words), or None when no copy lands in range.

    A near-duplicate ("dup") edits 1%-5% of the words (spread out, or in a burst) and must keep
    a true Jaccard >= threshold: when it does not, the edit count shrinks and it is redone. A
    near-miss ("miss") edits more, spread out, to land at Jaccard 0.5-0.78: similar text that
    a 0.8 threshold must not call a duplicate."""
    original = shingles(text, shingle_words)
    words = word_count(document)
    if kind == "dup":
        burst = bool(rng.random() < 0.5)
        edits = max(1, round(words * float(rng.uniform(0.01, 0.05))))
        low, high = threshold, 1.0
    else:
        burst = False
        edits = max(2, round(words * float(rng.uniform(0.025, 0.06))))
        low, high = 0.5, 0.78
    for _ in range(12):
        copy, made = edit(rng, vocabulary, document, edits, burst)
        copy_text = render(copy)
        score = jaccard(original, shingles(copy_text, shingle_words))
        if low <= score <= high and copy_text != text:
            return copy_text, score, made / words
        edits = max(1, int(edits * 0.75)) if score < low else edits + max(1, edits // 3)
    return None
