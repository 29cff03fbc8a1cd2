"""The unit of data every stage reads and writes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class Document:
    id: str  # stable across runs: the same source yields the same ids
    text: str
    source: str  # where it came from: a path, or "python-docs"
    metadata: dict[str, Any] = field(default_factory=dict)
