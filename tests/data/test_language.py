"""Language identification: language and probability in the metadata, `languages` keeping only those."""

from __future__ import annotations

from tokenworks.data.clean import CleanSettings, clean_documents
from tokenworks.data.language import identify_language
from tokenworks.data.records import document_record

from .formats import ENGLISH, FRENCH, GERMAN


def test_each_language_is_identified_with_its_probability() -> None:
    assert [identify_language(text) for text in (ENGLISH, GERMAN, FRENCH)] == [
        ("en", 1.0), ("de", 1.0), ("fr", 1.0),
    ]  # fmt: skip


def test_languages_keeps_only_those_and_names_the_language_it_drops() -> None:
    records = [document_record(name, text, "src") for name, text in (("en", ENGLISH), ("de", GERMAN), ("fr", FRENCH))]
    english, german, french = clean_documents(records, CleanSettings(thresholds=None, languages=("en", "de")))
    assert english["metadata"] == {"language": "en", "language_score": 1.0}
    assert german["metadata"] == {"language": "de", "language_score": 1.0}
    assert french["rejected"] == {
        "stage": "language",
        "reason": "language fr (probability 1.00) is not one of en, de",
        "language": "fr",
    }
