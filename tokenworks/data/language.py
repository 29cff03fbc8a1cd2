"""Natural-language identification, offline: langid.py's model (py3langid, 142 languages, shipped
inside its wheel, nothing downloaded), 1 to 2 ms a document on one core.

Only the start of a long document is read: a few thousand characters decide its language as
well as the whole would, and keep the cost flat however long the document.
"""

from __future__ import annotations

from functools import cache
from typing import Any

_SAMPLE_CHARACTERS = 3000


@cache
def _identifier() -> Any:
    # Loaded once per process (about a second), on first use: workers load their own.
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


def identify_language(text: str) -> tuple[str, float]:
    """(ISO 639 code, probability between 0 and 1) of the text's language."""
    language, probability = _identifier().classify(text[:_SAMPLE_CHARACTERS])
    return str(language), round(float(probability), 4)


def known_languages() -> list[str]:
    return sorted(_identifier().nb_classes)
