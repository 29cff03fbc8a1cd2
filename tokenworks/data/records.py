"""The records every ingest stage passes on: plain dicts (id, text, source, metadata), so they
cross any process boundary, and the mark a stage leaves on one it drops."""

from __future__ import annotations

from typing import Any

Record = dict[str, Any]


def document_record(doc_id: str, text: str, source: str, **metadata: Any) -> Record:
    return {"id": doc_id, "text": text, "source": source, "metadata": metadata}


def rejection(record: Record, stage: str, reason: str, **details: Any) -> Record:
    """The record, marked as dropped by `stage` for `reason` (the pipeline files it under rejected/)."""
    return {**record, "rejected": {"stage": stage, "reason": reason, **details}}
