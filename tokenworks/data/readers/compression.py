"""Compressed inputs, recognised by their first bytes (a suffix can lie, or be missing) and
decompressed as a stream: gzip, zstd, bzip2 and xz."""

from __future__ import annotations

import bz2
import gzip
import lzma
from pathlib import PurePosixPath
from typing import IO

import zstandard

# (format, magic number at offset 0, the suffixes it is usually written with)
_FORMATS = (
    ("gzip", b"\x1f\x8b", (".gz", ".tgz")),
    ("zstd", b"\x28\xb5\x2f\xfd", (".zst", ".zstd", ".tzst")),
    ("bzip2", b"BZh", (".bz2", ".tbz2")),
    ("xz", b"\xfd7zXZ\x00", (".xz", ".txz")),
)
# A compressed tarball's short suffix names the tar inside.
_SHORT_TAR_SUFFIXES = (".tgz", ".tzst", ".tbz2", ".txz")
# What a corrupt or truncated stream raises, whichever decompressor reads it.
DECOMPRESSION_ERRORS: tuple[type[Exception], ...] = (EOFError, OSError, lzma.LZMAError, zstandard.ZstdError)


def compression_of(head: bytes) -> str | None:
    """The compression format these first bytes start, or None for an uncompressed stream."""
    for name, magic, _ in _FORMATS:
        if head.startswith(magic):
            return name
    return None


def decompressed(stream: IO[bytes], compression: str) -> IO[bytes]:
    """A stream of the decompressed bytes; nothing is read ahead beyond a buffer."""
    if compression == "gzip":
        return gzip.GzipFile(fileobj=stream, mode="rb")  # type: ignore[return-value]
    if compression == "bzip2":
        return bz2.BZ2File(stream)  # type: ignore[return-value]
    if compression == "xz":
        return lzma.LZMAFile(stream)  # type: ignore[return-value]
    if compression == "zstd":
        # read_across_frames: a file written as several frames (as zstd --long and pzstd do) is one stream
        return zstandard.ZstdDecompressor().stream_reader(stream, read_across_frames=True)  # type: ignore[return-value]
    raise ValueError(f"unknown compression {compression!r}")


def inner_name(name: str) -> str:
    """The name without its compression suffix, so the suffix left names the content:
    `notes.txt.gz` -> `notes.txt`, `src.tgz` -> `src.tar`, `changelog.Debian.gz` -> `changelog.Debian`."""
    path = PurePosixPath(name)
    suffix = path.suffix.lower()
    if suffix in _SHORT_TAR_SUFFIXES:
        return str(path.with_suffix(".tar"))
    if any(suffix in suffixes for _, _, suffixes in _FORMATS):
        return str(path.with_suffix(""))
    return name
