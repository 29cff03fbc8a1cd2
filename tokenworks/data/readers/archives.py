"""Archives whose members are read like files: tar (streamed, member after member, compressed
or not) and zip (through its central directory, so it needs a seekable input)."""

from __future__ import annotations

import tarfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO

from tokenworks.data.readers.inputs import Unreadable


@dataclass(slots=True)
class Member:
    name: str  # its path inside the archive
    stream: IO[bytes] | None  # None when it is not a regular file
    skipped: str | None = None  # why it is not read, when it is not


def tar_members(stream: IO[bytes]) -> Iterator[Member]:
    """Each file of a tar, in archive order; a member's stream is valid until the next is asked for."""
    try:
        with tarfile.open(fileobj=stream, mode="r|") as archive:  # "r|": a stream, never seeking back
            for info in archive:
                if info.isdir():
                    continue
                if not info.isfile():
                    yield Member(info.name, None, "a link or special file in the archive (not followed)")
                    continue
                yield Member(info.name, archive.extractfile(info))
    except tarfile.TarError as error:
        raise Unreadable(f"not a readable tar archive: {error}") from None


def office_format(archive: zipfile.ZipFile) -> str | None:
    """What kind of office document a zip is ("docx", "another Office Open XML document",
    "an OpenDocument file"), or None for a plain archive whose members are files to read."""
    names = set(archive.namelist())
    if "[Content_Types].xml" in names:
        return "docx" if "word/document.xml" in names else "an Office Open XML document other than DOCX"
    if "mimetype" in names and "META-INF/manifest.xml" in names:
        return "an OpenDocument file"
    return None


def zip_members(archive: zipfile.ZipFile) -> Iterator[Member]:
    for info in archive.infolist():
        if info.is_dir():
            continue
        if info.flag_bits & 0x1:
            yield Member(info.filename, None, "an encrypted member of the zip (needs a password)")
            continue
        try:
            member = archive.open(info)
        # zipfile raises NotImplementedError for a compression method it lacks (deflate64, ...)
        except (NotImplementedError, zipfile.BadZipFile) as error:
            yield Member(info.filename, None, f"an unreadable member of the zip: {error}")
            continue
        with member:
            yield Member(info.filename, member)  # type: ignore[arg-type]
