"""The clean stage, one document at a time: normalise, identify the language (and keep only the
languages asked for), filter on quality, redact PII.

Code (`metadata.kind == "code"`) is normalised without touching its spacing, has no natural
language to identify, and meets the code quality rules instead of the prose ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tokenworks.data.code_quality import code_quality_issue
from tokenworks.data.language import identify_language
from tokenworks.data.normalize import normalize_code, normalize_text
from tokenworks.data.pii import redact_pii
from tokenworks.data.quality import QualityThresholds, quality_issue
from tokenworks.data.records import Record, rejection


@dataclass(frozen=True, slots=True)
class CleanSettings:
    thresholds: QualityThresholds | None  # None: no quality filter
    by_source: dict[str, QualityThresholds] = field(default_factory=dict)  # per-source thresholds
    redact: bool = True
    languages: tuple[str, ...] | None = None  # keep only documents in these languages; None: all

    def thresholds_for(self, source: str) -> QualityThresholds | None:
        if self.thresholds is None:
            return None
        return self.by_source.get(source, self.thresholds)


def clean_documents(records: list[Record], settings: CleanSettings) -> list[Record]:
    """Batch function: each record normalised, then dropped (with reason) or redacted."""
    return [_clean(record, settings) for record in records]


def _clean(record: Record, settings: CleanSettings) -> Record:
    metadata = record["metadata"]
    is_code = metadata.get("kind") == "code"
    text = normalize_code(record["text"]) if is_code else normalize_text(record["text"])
    if not text:
        return rejection(record, "normalize", "empty after normalisation")
    if not is_code:
        language, score = identify_language(text)
        metadata = {**metadata, "language": language, "language_score": score}
        if settings.languages is not None and language not in settings.languages:
            wanted = ", ".join(settings.languages)
            reason = f"language {language} (probability {score:.2f}) is not one of {wanted}"
            return rejection({**record, "text": text, "metadata": metadata}, "language", reason, language=language)
    thresholds = settings.thresholds_for(record["source"])
    if thresholds is not None:
        issue = code_quality_issue(text, thresholds) if is_code else quality_issue(text, thresholds)
        if issue:
            return rejection({**record, "text": text, "metadata": metadata}, "quality", issue)
    if settings.redact:
        redaction = redact_pii(text)
        if redaction.total:
            text = redaction.text
            metadata = {
                **metadata,
                "pii": {"emails": redaction.emails, "phones": redaction.phones, "ips": redaction.ips},
            }
    return {**record, "text": text, "metadata": metadata}
