"""Each quality rule on crafted documents, kept just inside its threshold and dropped just outside."""

from __future__ import annotations

import pytest

from tokenworks.data.quality import QualityThresholds, quality_issue
from tokenworks.errors import ConfigError

ONLY = QualityThresholds.disabled()


def words(n: int, word: str = "word") -> str:
    """n distinct-enough words of 4+ letters (numbers spelled into letters to avoid n-gram repeats)."""
    letters = "abcdefghij"
    return " ".join(word + "".join(letters[int(d)] for d in str(i)) for i in range(n))


def test_a_plain_prose_document_passes_every_default_rule() -> None:
    text = "\n".join(words(12, word=f"line{chr(97 + i)}") for i in range(6))
    assert quality_issue(text, QualityThresholds()) is None


@pytest.mark.parametrize(
    ("rule", "limit", "kept", "dropped", "reason"),
    [
        ("min_words", 50, words(50), words(49), "too few words: 49 < 50"),
        ("max_words", 100, words(100), words(101), "too many words: 101 > 100"),
        ("min_mean_word_length", 3.0, "abc " * 10, "ab abcd " * 5 + "ab", "mean word length 2.91 < 3.0"),
        ("max_mean_word_length", 10.0, "a" * 10, "a" * 11, "mean word length 11.00 > 10.0"),
        ("max_symbol_word_ratio", 0.1, "# " + words(9), "# # " + words(8), "symbol-to-word ratio 0.200 > 0.1"),
        ("min_alpha_word_fraction", 0.8, "12 34 " + words(8), "12 34 56 " + words(7), "fraction of words with a letter 0.700 < 0.8"),
        ("max_ellipsis_line_fraction", 0.3, "a...\nb...\nc...\nd\ne\nf\ng\nh\ni\nj", "a...\nb…\nc...\nd...\ne\nf\ng\nh\ni\nj", "ellipsis-line fraction 0.400 > 0.3"),
    ],
)  # fmt: skip
def test_each_rule_at_its_threshold(rule: str, limit: float, kept: str, dropped: str, reason: str) -> None:
    thresholds = ONLY.with_overrides({rule: limit})
    assert quality_issue(kept, thresholds) is None
    assert quality_issue(dropped, thresholds) == reason


def test_duplicate_line_fraction_drops_above_the_threshold() -> None:
    thresholds = ONLY.with_overrides({"max_duplicate_line_fraction": 0.3})
    assert quality_issue("a\nb\nc\na\nb\nc\nd\ne\nf\ng", thresholds) is None  # 3 of 10 repeat: 0.3, kept
    assert quality_issue("a\nb\nc\na\nb\nc\nd\na\nf\ng", thresholds) == "duplicate-line fraction 0.400 > 0.3"


@pytest.mark.parametrize(("n", "limit"), [(2, 0.20), (3, 0.18), (4, 0.16)])
def test_top_ngram_character_fraction(n: int, limit: float) -> None:
    thresholds = ONLY.with_overrides({f"max_top_{n}gram_fraction": limit})
    phrase = " ".join(f"rep{chr(97 + i)}" for i in range(n))  # n words of 4 letters
    filler = words(60)
    assert quality_issue(f"{phrase} {filler}", thresholds) is None  # appears once: no repetition
    repeated = f"{phrase} " * 30 + filler
    issue = quality_issue(repeated, thresholds)
    assert issue is not None and issue.startswith(f"top {n}-gram character fraction")


def test_overrides_parse_numbers_and_none_and_reject_unknown_names() -> None:
    thresholds = QualityThresholds().with_overrides({"min_words": "20", "max_symbol_word_ratio": "none"})
    assert thresholds.min_words == 20 and thresholds.max_symbol_word_ratio is None
    with pytest.raises(ConfigError, match="unknown quality threshold 'min_word'"):
        QualityThresholds().with_overrides({"min_word": 1})
    with pytest.raises(ConfigError, match="must be a number or 'none'"):
        QualityThresholds().with_overrides({"min_words": "many"})
