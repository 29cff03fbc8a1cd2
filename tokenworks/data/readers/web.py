"""The web: HTML pages, and web archives (WARC responses, WET text) as FineWeb reads them.

An HTML file and each HTML response inside a WARC file become their main content and title,
through the extractor of `--html-extractor` (main_content.py: trafilatura by default, as
FineWeb, or Resiliparse). FastWARC (Resiliparse's sibling) streams WARC files record by record.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import IO, Any

from tokenworks.data.readers.inputs import Input
from tokenworks.data.readers.main_content import PageExtractor
from tokenworks.data.records import Record

_HTML_TYPES = ("text/html", "application/xhtml+xml")


def html_encoding(data: bytes, declared: str | None) -> str:
    """UTF-8 when the bytes are, else what the server declared, else Resiliparse's guess."""
    try:
        data.decode("utf-8")
        return "utf-8"
    except UnicodeDecodeError:
        pass
    if declared:
        try:
            data.decode(declared)
            return declared.lower()
        except (UnicodeDecodeError, LookupError):
            pass
    from resiliparse.parse.encoding import detect_encoding

    return detect_encoding(data)


def read_html(item: Input, html: str, encoding: str, pages: PageExtractor) -> Record:
    """An HTML file, already decoded (see text.py), as its main content and title."""
    text, title = pages(html)
    if not text.strip():
        return item.rejection("no main content in the HTML", encoding=encoding)
    return item.document(text, encoding=encoding, **({"title": title} if title else {}))


def read_warc(item: Input, stream: IO[bytes] | str, pages: PageExtractor) -> Iterator[Record]:
    """Each HTML response (or WET conversion record) as a document: its main content, URL and date.

    `stream` is the decompressed input, seekable, or the path of the file for FastWARC to open
    (and decompress, gzip or zstd) itself, which is faster than handing it a Python stream.
    """
    from fastwarc.warc import ArchiveIterator, WarcRecordType

    wanted = WarcRecordType.response | WarcRecordType.conversion | WarcRecordType.resource
    records = ArchiveIterator(stream, record_types=wanted, parse_http=True, fsspec_args=False)
    for record in records:
        headers = record.headers
        doc_id = headers.get("WARC-Record-ID") or f"{item.doc_id}@{record.stream_pos}"
        metadata: dict[str, Any] = {"url": headers.get("WARC-Target-URI"), "date": headers.get("WARC-Date")}
        if record.record_type == WarcRecordType.conversion:  # WET: text already extracted
            text = record.reader.read().decode("utf-8", errors="replace")
            yield item.document(text, doc_id, **metadata)
            continue
        yield _response_document(item, record, doc_id, metadata, pages)


def _response_document(item: Input, record: Any, doc_id: str, metadata: dict[str, Any], pages: PageExtractor) -> Record:
    if record.is_http:
        status = record.http_headers.status_code
        if status is not None and not 200 <= status < 300:
            return item.rejection(f"HTTP status {status}", doc_id, **metadata)
        content_type = (record.http_content_type or "").lower()
    else:  # a resource record: the block is the content
        content_type = (record.headers.get("Content-Type") or "").split(";")[0].strip().lower()
    if content_type not in _HTML_TYPES:
        return item.rejection(f"not HTML ({content_type or 'no content type'})", doc_id, **metadata)
    data = record.reader.read()
    encoding = html_encoding(data, record.http_charset if record.is_http else None)
    text, title = pages(data, encoding)
    if not text.strip():
        return item.rejection("no main content in the HTML", doc_id, **metadata)
    if title:
        metadata["title"] = title
    return item.document(text, doc_id, **metadata)
