"""The read stage's batch function: each file to the reader of its format, through any layers
of compression and archive around it, as a stream.

A file that cannot be read (binary, of no known encoding, malformed, a PDF without text)
becomes a rejection record with the reason, never an exception: one bad file does not stop a
corpus. A member of an archive is read like a file; its documents' ids name the archive and
the member (`archive.tar.gz!docs/a.txt`), and so does their metadata (`path`, `member`).
"""

from __future__ import annotations

import logging
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass

from tokenworks.data.readers.archives import Member, office_format, tar_members, zip_members
from tokenworks.data.readers.compression import DECOMPRESSION_ERRORS, compression_of, decompressed, inner_name
from tokenworks.data.readers.documents import read_docx, read_pdf
from tokenworks.data.readers.inputs import Input, Unreadable, peek, seekable
from tokenworks.data.readers.main_content import PageExtractor
from tokenworks.data.readers.sniff import identify
from tokenworks.data.readers.structured import read_jsonl, read_parquet
from tokenworks.data.readers.text import decode
from tokenworks.data.readers.web import read_html, read_warc
from tokenworks.data.records import Record, document_record, rejection

logger = logging.getLogger(__name__)

# Layers of compression and archives around one document: deeper is a zip bomb, not a corpus.
MAX_DEPTH = 4


@dataclass(frozen=True, slots=True)
class Reading:
    """How one file is read: the fields of its JSONL objects and parquet rows, and the extractor
    of its HTML pages (one a file, see PageExtractor)."""

    text_field: str
    id_field: str
    pages: PageExtractor


def read_files(
    files: list[Record], text_field: str = "text", id_field: str = "id", html_extractor: str = "trafilatura"
) -> list[Record]:
    """Batch function: file records ({"path", "source"}) in, document (or rejection) records out."""
    records: list[Record] = []
    for file in files:
        records += read_file(file, Reading(text_field, id_field, PageExtractor(html_extractor)))
    return records


def read_file(file: Record, reading: Reading) -> Iterator[Record]:
    path, source = file["path"], file["source"]
    try:
        handle = open(path, "rb")  # noqa: SIM115 - the with below closes it; a failed open is a rejection
    except OSError as error:
        record = document_record(path, "", source, path=path)
        yield rejection(record, "read", f"cannot read: {error.strerror or error}")
        return
    with handle:
        head, stream = peek(handle)
        yield from _read(Input(source, path, path, stream, head, disk_path=path, metadata={"path": path}), reading)


def _read(item: Input, reading: Reading) -> Iterator[Record]:
    """The input's records; what goes wrong ends this input (with a rejection saying why), not the corpus."""
    try:
        yield from _read_format(item, reading)
    except Unreadable as error:
        yield item.rejection(str(error))
    except DECOMPRESSION_ERRORS as error:
        yield item.rejection(f"corrupt or truncated data: {error}")
    except Exception as error:  # a parser (PDF, DOCX, WARC, HTML) failing on input it was not ready for
        logger.debug("reading %s failed", item.doc_id, exc_info=True)
        yield item.rejection(
            f"the {identify(item.name, item.head).kind} reader failed: {type(error).__name__}: {error}"
        )


def _read_format(item: Input, reading: Reading) -> Iterator[Record]:
    compression = compression_of(item.head)
    if compression:
        yield from _read_compressed(item, compression, reading)
        return
    form = identify(item.name, item.head)
    kind = form.kind
    if kind in ("text", "code", "html"):
        text, encoding = decode(item.stream.read())
        if kind == "html":
            yield read_html(item, text, encoding, reading.pages)
        elif kind == "code":
            yield item.document(text, kind="code", programming_language=form.detail, encoding=encoding)
        else:
            yield item.document(text, encoding=encoding)
    elif kind == "jsonl":
        yield from read_jsonl(item, reading.text_field, reading.id_field)
    elif kind == "parquet":
        yield from read_parquet(item, reading.text_field, reading.id_field)
    elif kind == "warc":
        if item.disk_path:
            yield from read_warc(item, item.disk_path, reading.pages)
        else:  # FastWARC seeks in the streams it is given (and panics where it cannot)
            with seekable(item) as handle:
                yield from read_warc(item, handle, reading.pages)
    elif kind == "pdf":
        with seekable(item) as handle:
            yield read_pdf(item, handle)
    elif kind == "docx":
        with seekable(item) as handle:
            yield read_docx(item, handle)
    elif kind == "tar":
        yield from _read_members(item, tar_members(item.stream), reading)
    elif kind == "zip":
        yield from _read_zip(item, reading)
    else:
        yield item.rejection(f"binary file ({form.detail or 'of no known type'})")


def _read_compressed(item: Input, compression: str, reading: Reading) -> Iterator[Record]:
    if item.depth >= MAX_DEPTH:
        raise Unreadable(f"more than {MAX_DEPTH} layers of compression and archives")
    stream = decompressed(item.stream, compression)
    inner = item.nested(inner_name(item.name), item.doc_id, stream, compression=compression)
    if item.disk_path and compression in ("gzip", "zstd") and identify(inner.name, inner.head).kind == "warc":
        # FastWARC decompresses a .warc.gz or .warc.zst on disk itself, faster than a Python stream
        yield from read_warc(inner, item.disk_path, reading.pages)
        return
    yield from _read(inner, reading)


def _read_zip(item: Input, reading: Reading) -> Iterator[Record]:
    with seekable(item) as handle:
        try:
            archive = zipfile.ZipFile(handle)
        except zipfile.BadZipFile as error:
            raise Unreadable(f"not a readable zip archive: {error}") from None
        with archive:
            office = office_format(archive)
            if office == "docx":  # a Word document without its .docx suffix
                handle.seek(0)
                yield read_docx(item, handle)
            elif office:  # its members are XML parts of one document, not files to read
                yield item.rejection(f"{office} (not read; save it as DOCX, PDF or text)")
            else:
                yield from _read_members(item, zip_members(archive), reading)


def _read_members(item: Input, members: Iterator[Member], reading: Reading) -> Iterator[Record]:
    if item.depth >= MAX_DEPTH:
        raise Unreadable(f"more than {MAX_DEPTH} layers of compression and archives")
    outer = item.metadata.get("member")
    for member in members:
        path = f"{outer}!{member.name}" if outer else member.name
        doc_id = f"{item.metadata['path']}!{path}"
        if member.stream is None:
            yield item.rejection(member.skipped or "not a file", doc_id, member=path)
            continue
        yield from _read(item.nested(member.name, doc_id, member.stream, member=path), reading)
