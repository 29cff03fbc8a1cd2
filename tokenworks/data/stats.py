"""What one ingest stage did: documents and characters in and out, and what it dropped, by reason.

The pipeline keeps one `StageStats` per stage (in its completion marker and stats.json), and
manifest.json records the document counts of each, and what the clean stage kept per language.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from tokenworks.data.records import Record


@dataclass(slots=True)
class StageStats:
    stage: str
    documents_in: int
    documents_out: int
    characters_in: int
    characters_out: int
    seconds: float = 0.0
    resumed: bool = False
    dropped: dict[str, int] = field(default_factory=dict)  # by the step that dropped them
    tokens_out: int | None = None
    # Documents kept, by natural language (ISO 639 code) or, for code, "code:" and the language.
    languages: dict[str, int] = field(default_factory=dict)

    @classmethod
    def of(cls, stage: str, before: list[Record], after: list[Record], dropped: dict[str, int]) -> StageStats:
        return cls(stage, len(before), len(after), characters(before), characters(after), dropped=dropped)


def characters(records: list[Record]) -> int:
    return sum(len(record["text"]) for record in records)


def languages_of(records: list[Record]) -> dict[str, int]:
    """Documents by language, most first (ties by name, so the order is the same on every run)."""
    counts = Counter(
        f"code:{metadata.get('programming_language')}"
        if metadata.get("kind") == "code"
        else metadata.get("language", "unknown")
        for metadata in (record["metadata"] for record in records)
    )
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))
