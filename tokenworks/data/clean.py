"""The clean stage, one document at a time: normalise, filter on quality, redact PII."""

from __future__ import annotations

from dataclasses import dataclass, field

from tokenworks.data.normalize import normalize_text
from tokenworks.data.pii import redact_pii
from tokenworks.data.quality import QualityThresholds, quality_issue
from tokenworks.data.records import Record, rejection


@dataclass(frozen=True, slots=True)
class CleanSettings:
    thresholds: QualityThresholds | None  # None: no quality filter
    by_source: dict[str, QualityThresholds] = field(default_factory=dict)  # per-source thresholds
    redact: bool = True

    def thresholds_for(self, source: str) -> QualityThresholds | None:
        if self.thresholds is None:
            return None
        return self.by_source.get(source, self.thresholds)


def clean_documents(records: list[Record], settings: CleanSettings) -> list[Record]:
    """Batch function: each record normalised, then dropped (with reason) or redacted."""
    out = []
    for record in records:
        text = normalize_text(record["text"])
        if not text:
            out.append(rejection(record, "normalize", "empty after normalisation"))
            continue
        thresholds = settings.thresholds_for(record["source"])
        issue = quality_issue(text, thresholds) if thresholds is not None else None
        if issue:
            out.append(rejection({**record, "text": text}, "quality", issue))
            continue
        metadata = record["metadata"]
        if settings.redact:
            redaction = redact_pii(text)
            if redaction.total:
                text = redaction.text
                metadata = {
                    **metadata,
                    "pii": {"emails": redaction.emails, "phones": redaction.phones, "ips": redaction.ips},
                }
        out.append({**record, "text": text, "metadata": metadata})
    return out
