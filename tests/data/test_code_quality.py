"""The code rules (The Stack's) at their thresholds, and code's way through the clean stage."""

from __future__ import annotations

import pytest

from tokenworks.data.clean import CleanSettings, clean_documents
from tokenworks.data.code_quality import code_quality_issue
from tokenworks.data.quality import QualityThresholds
from tokenworks.data.records import document_record

from .formats import C_SOURCE, ENGLISH, MINIFIED_JS

ONLY = QualityThresholds.disabled()


@pytest.mark.parametrize(
    ("rule", "limit", "kept", "dropped", "reason"),
    [
        ("max_line_length", 10, "a" * 10, "a" * 11, "longest line 11 characters > 10"),
        ("max_mean_line_length", 4.0, "abcd\nabcd", "abcde\nabcd", "mean line length 4.5 > 4.0"),
        ("min_alphanumeric_fraction", 0.5, "ab{}", "a{{}", "alphanumeric fraction 0.250 < 0.5"),
        ("generated_marker_lines", 2, "x = 1\ny = 2\n# DO NOT EDIT", "x = 1\n// Auto-generated file\n",
         "generated code: line 2 says 'Auto-generated'"),
    ],
)  # fmt: skip
def test_each_code_rule_at_its_threshold(rule: str, limit: float, kept: str, dropped: str, reason: str) -> None:
    thresholds = ONLY.with_overrides({rule: limit})
    assert code_quality_issue(kept, thresholds) is None
    assert code_quality_issue(dropped, thresholds) == reason


def _code(name: str, text: str, language: str) -> dict:
    return document_record(name, text, "src", path=name, kind="code", programming_language=language)


def test_code_keeps_its_indentation_skips_language_id_and_meets_code_rules() -> None:
    settings = CleanSettings(thresholds=QualityThresholds())
    c_file, minified, prose = clean_documents(
        [_code("main.c", C_SOURCE + "\n\n", "C"), _code("app.min.js", MINIFIED_JS, "JavaScript"),
         document_record("a.txt", ENGLISH + " " + ENGLISH, "src", path="a.txt")],
        settings,
    )  # fmt: skip
    # The prose rules would have dropped it (30 words < 50); the code rules keep it, spacing and all.
    assert c_file == _code("main.c", C_SOURCE.rstrip("\n"), "C")
    assert minified["rejected"] == {"stage": "quality", "reason": "longest line 1,500 characters > 1,000"}
    assert "language" not in minified["metadata"]
    assert prose["metadata"] == {"path": "a.txt", "language": "en", "language_score": 1.0}


def test_per_source_thresholds_relax_the_code_rules_too() -> None:
    relaxed = QualityThresholds().with_overrides({"max_line_length": 2000, "max_mean_line_length": "none"})
    settings = CleanSettings(thresholds=QualityThresholds(), by_source={"vendor": relaxed})
    record = {**_code("app.min.js", MINIFIED_JS, "JavaScript"), "source": "vendor"}
    assert "rejected" not in clean_documents([record], settings)[0]
