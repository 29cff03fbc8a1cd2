"""Quality filters in the style of Gopher (Rae et al., 2021) and C4: cheap rules on word
and line statistics that drop boilerplate, lists, spam and garbled text.

Every rule is on by default; a threshold of None turns its rule off. Defaults:

| rule | keeps a document when |
|---|---|
| words | 50 <= whitespace-separated words <= 100,000 |
| mean word length | 3 <= mean length of words (surrounding punctuation stripped) <= 10 |
| symbol-to-word ratio | (`#` + `...` + `…`) / words <= 0.1 |
| words with a letter | fraction of words containing an alphabetic character >= 0.8 |
| duplicate lines | fraction of non-empty lines that repeat an earlier line <= 0.3 |
| top n-gram | characters covered by the most frequent word 2-, 3-, 4-gram / all word characters <= 0.20, 0.18, 0.16 |
| ellipsis lines | fraction of lines ending in `...` or `…` <= 0.3 |

Rules run cheapest first and the first failure is the recorded reason. Source code (documents
of kind "code") gets The Stack's rules instead (see code_quality.py); their thresholds live here
too, so `--quality` and `--source-quality` change them the same way.
"""

from __future__ import annotations

import string
from collections import Counter
from dataclasses import dataclass, fields, replace
from typing import Any

from tokenworks.errors import ConfigError

_PUNCTUATION = string.punctuation + "“”‘’«»…–—"


@dataclass(frozen=True, slots=True)
class QualityThresholds:
    min_words: int | None = 50
    max_words: int | None = 100_000
    min_mean_word_length: float | None = 3.0
    max_mean_word_length: float | None = 10.0
    max_symbol_word_ratio: float | None = 0.1
    min_alpha_word_fraction: float | None = 0.8
    max_duplicate_line_fraction: float | None = 0.3
    max_top_2gram_fraction: float | None = 0.20
    max_top_3gram_fraction: float | None = 0.18
    max_top_4gram_fraction: float | None = 0.16
    max_ellipsis_line_fraction: float | None = 0.3
    # Code only, in place of the rules above (The Stack, Kocetkov et al., 2022).
    max_line_length: int | None = 1000
    max_mean_line_length: float | None = 100.0
    min_alphanumeric_fraction: float | None = 0.25
    generated_marker_lines: int | None = 5  # first lines searched for "auto-generated" and the like

    def with_overrides(self, overrides: dict[str, Any]) -> QualityThresholds:
        """A copy with some thresholds changed; values may be numbers, numeric strings or 'none'."""
        names = {f.name for f in fields(self)}
        parsed: dict[str, float | int | None] = {}
        for name, value in overrides.items():
            if name not in names:
                raise ConfigError(f"unknown quality threshold {name!r}; known: {', '.join(sorted(names))}")
            parsed[name] = _parse_threshold(name, value)
        return replace(self, **parsed)

    @classmethod
    def disabled(cls) -> QualityThresholds:
        return cls(**{f.name: None for f in fields(cls)})


# The default corpus is documentation full of code and short API entries: prose rules that
# would drop most of it are relaxed for it (and can be for any source, see IngestOptions).
PYTHON_DOCS_RELAXED = {
    "min_words": 20,
    "min_alpha_word_fraction": 0.5,
    "max_symbol_word_ratio": 0.5,
    "max_mean_word_length": 15,
    "max_duplicate_line_fraction": 0.6,
    "max_ellipsis_line_fraction": 0.6,
    "max_top_2gram_fraction": 0.3,
    "max_top_3gram_fraction": 0.3,
    "max_top_4gram_fraction": 0.3,
}


def _parse_threshold(name: str, value: Any) -> float | int | None:
    if value is None or (isinstance(value, str) and value.strip().lower() in {"none", "off"}):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"quality threshold {name} must be a number or 'none', got {value!r}") from None
    return int(number) if name.endswith(("_words", "_lines")) or name == "max_line_length" else number


def quality_issue(text: str, thresholds: QualityThresholds) -> str | None:
    """Why the document fails the quality rules, or None when it passes."""
    t = thresholds
    words = text.split()
    count = len(words)
    if t.min_words is not None and count < t.min_words:
        return f"too few words: {count} < {t.min_words}"
    if t.max_words is not None and count > t.max_words:
        return f"too many words: {count} > {t.max_words}"
    if count == 0:
        return "no words"
    stripped = [w for w in (word.strip(_PUNCTUATION) for word in words) if w]
    mean_length = sum(map(len, stripped)) / len(stripped) if stripped else 0.0
    if t.min_mean_word_length is not None and mean_length < t.min_mean_word_length:
        return f"mean word length {mean_length:.2f} < {t.min_mean_word_length}"
    if t.max_mean_word_length is not None and mean_length > t.max_mean_word_length:
        return f"mean word length {mean_length:.2f} > {t.max_mean_word_length}"
    if t.max_symbol_word_ratio is not None:
        symbols = text.count("#") + text.count("...") + text.count("…")
        if symbols / count > t.max_symbol_word_ratio:
            return f"symbol-to-word ratio {symbols / count:.3f} > {t.max_symbol_word_ratio}"
    if t.min_alpha_word_fraction is not None:
        alpha = sum(1 for word in words if any(ch.isalpha() for ch in word)) / count
        if alpha < t.min_alpha_word_fraction:
            return f"fraction of words with a letter {alpha:.3f} < {t.min_alpha_word_fraction}"
    line_issue = _line_issue(text, t)
    if line_issue:
        return line_issue
    return _ngram_issue([w.lower() for w in stripped], t)


def _line_issue(text: str, t: QualityThresholds) -> str | None:
    lines = [line.strip() for line in text.split("\n")]
    lines = [line for line in lines if line]
    if not lines:
        return None
    if t.max_duplicate_line_fraction is not None:
        duplicates = len(lines) - len(set(lines))
        if duplicates / len(lines) > t.max_duplicate_line_fraction:
            return f"duplicate-line fraction {duplicates / len(lines):.3f} > {t.max_duplicate_line_fraction}"
    if t.max_ellipsis_line_fraction is not None:
        ellipsis = sum(1 for line in lines if line.endswith(("...", "…")))
        if ellipsis / len(lines) > t.max_ellipsis_line_fraction:
            return f"ellipsis-line fraction {ellipsis / len(lines):.3f} > {t.max_ellipsis_line_fraction}"
    return None


def _ngram_issue(words: list[str], t: QualityThresholds) -> str | None:
    total_characters = sum(map(len, words))
    limits = ((2, t.max_top_2gram_fraction), (3, t.max_top_3gram_fraction), (4, t.max_top_4gram_fraction))
    for n, limit in limits:
        if limit is None or len(words) < n or total_characters == 0:
            continue
        ngram, repeats = Counter(zip(*(words[i:] for i in range(n)), strict=False)).most_common(1)[0]
        if repeats < 2:
            continue  # the most common n-gram is unique: no repetition at this n, nor above
        fraction = repeats * sum(map(len, ngram)) / total_characters
        if fraction > limit:
            return f"top {n}-gram character fraction {fraction:.3f} > {limit}"
    return None
