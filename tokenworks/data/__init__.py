"""Data: documents in, curated and tokenized shards out (the ingest stage grows here)."""

from tokenworks.data.document import Document
from tokenworks.data.python_docs import python_docs

__all__ = ["Document", "python_docs"]
