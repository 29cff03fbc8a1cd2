"""What a reader reads: one input (a file, or a member of an archive) as a decompressed stream.

Every format reader takes an `Input` and yields records; every record it yields carries the
input's id and metadata (the file's path, and the member's path inside an archive), so a
document, or a drop, always says where it came from.
"""

from __future__ import annotations

import io
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import IO, Any

from tokenworks.data.records import Record, document_record, rejection

PROBE_BYTES = 8192  # how much of an input is looked at to decide its format
# Readers that need to seek (zip, PDF, DOCX, parquet) spill a member or decompressed file to
# disk past this size rather than hold it in memory.
_SPOOL_BYTES = 32 << 20


class Unreadable(Exception):
    """An input (not a line or record of it) cannot be read; the reason is the message."""


@dataclass(slots=True)
class Input:
    source: str  # the source as named on the command line
    name: str  # path or member path, compression suffix removed: its suffix names the format
    doc_id: str  # the id of the document it yields (readers of many documents extend it)
    stream: IO[bytes]  # decompressed, at its start
    head: bytes  # the first PROBE_BYTES (or fewer) of the stream
    disk_path: str | None = None  # the plain file on disk, when the stream is just that file
    metadata: dict[str, Any] = field(default_factory=dict)  # path, member, compression
    depth: int = 0  # archives and compressed layers around it

    def document(self, text: str, doc_id: str | None = None, **metadata: Any) -> Record:
        return document_record(doc_id or self.doc_id, text, self.source, **{**self.metadata, **metadata})

    def rejection(self, reason: str, doc_id: str | None = None, **metadata: Any) -> Record:
        return rejection(self.document("", doc_id, **metadata), "read", reason)

    def nested(self, name: str, doc_id: str, stream: IO[bytes], **metadata: Any) -> Input:
        """An input inside this one (a member, or the decompressed content), with its head read."""
        head, stream = peek(stream)
        merged = {**self.metadata, **metadata}
        return replace(
            self,
            name=name,
            doc_id=doc_id,
            stream=stream,
            head=head,
            disk_path=None,
            metadata=merged,
            depth=self.depth + 1,
        )


def peek(stream: IO[bytes]) -> tuple[bytes, IO[bytes]]:
    """The first PROBE_BYTES of a stream, and a stream that still starts at the beginning."""
    head = stream.read(PROBE_BYTES)
    return head, io.BufferedReader(_Prefixed(head, stream), buffer_size=1 << 16)  # type: ignore[arg-type]


class _Prefixed(io.RawIOBase):
    """Bytes already read from a stream, then the rest of it: a peek for streams that cannot seek."""

    def __init__(self, prefix: bytes, rest: IO[bytes]) -> None:
        self._prefix = memoryview(prefix)
        self._rest = rest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._prefix:
            count = min(len(buffer), len(self._prefix))
            buffer[:count] = self._prefix[:count]
            self._prefix = self._prefix[count:]
            return count
        data = self._rest.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


@contextmanager
def seekable(item: Input) -> Iterator[IO[bytes]]:
    """A seekable copy of the input: the file itself when it is one, else spooled (to disk past 32 MiB)."""
    if item.disk_path is not None:
        with open(item.disk_path, "rb") as handle:
            yield handle
        return
    with tempfile.SpooledTemporaryFile(max_size=_SPOOL_BYTES) as spool:
        shutil.copyfileobj(item.stream, spool, 1 << 20)
        spool.seek(0)
        yield spool  # type: ignore[misc]
