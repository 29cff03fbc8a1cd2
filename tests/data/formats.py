"""Real files of every format the readers take, each written by its own library in the test."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import tarfile
import zipfile
from pathlib import Path

import docx
import zstandard
from pypdf import PdfWriter
from pypdf.generic import DecodedStreamObject, DictionaryObject, NameObject
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

ENGLISH = (
    "The library opens at nine in the morning and closes at six in the evening. Visitors may borrow "
    "up to five books at a time, and the staff will gladly help anyone who is looking for something "
    "specific. On Saturdays the reading room hosts a small group that discusses one novel each month."
)
GERMAN = (
    "Die Bibliothek öffnet um neun Uhr morgens und schließt um sechs Uhr abends. Besucher dürfen bis zu "
    "fünf Bücher gleichzeitig ausleihen, und das Personal hilft gern allen, die etwas Bestimmtes suchen. "
    "Samstags trifft sich im Lesesaal eine kleine Gruppe, die jeden Monat einen Roman bespricht."
)
FRENCH = (
    "La bibliothèque ouvre à neuf heures du matin et ferme à six heures du soir. Les visiteurs peuvent "
    "emprunter jusqu'à cinq livres à la fois, et le personnel aide volontiers toute personne qui cherche "
    "quelque chose de précis. Le samedi, un petit groupe se réunit pour discuter d'un roman chaque mois."
)
C_SOURCE = """\
#include <stdio.h>

/* Print the first ten square numbers, one per line. */
int main(void) {
    for (int i = 1; i <= 10; i++) {
        printf("%d\\n", i * i);
    }
    return 0;
}
"""
# One line of 1,500 characters, as a minifier writes it.
MINIFIED_JS = "var a=function(b){return b*2};" * 50


def page(title: str, body: str) -> bytes:
    """An HTML page with the boilerplate main-content extraction must drop: navigation, header, footer."""
    return f"""<!doctype html><html><head><title>{title}</title><style>p {{color: red}}</style></head><body>
<nav><ul><li><a href="/">Home</a></li><li><a href="/news">News</a></li><li><a href="/about">About us</a></li></ul></nav>
<header><div class="menu">Menu | Sign in | Subscribe</div></header>
<main><article><h1>{title}</h1><p>{body}</p></article></main>
<footer><p>Copyright 2024 Example Town. All rights reserved.</p><a href="/privacy">Privacy policy</a></footer>
<script>var tracking = true;</script></body></html>""".encode()


def write_gzip(path: Path, data: bytes) -> Path:
    path.write_bytes(gzip.compress(data, mtime=0))
    return path


def write_zstd(path: Path, data: bytes) -> Path:
    path.write_bytes(zstandard.ZstdCompressor().compress(data))
    return path


def write_bzip2(path: Path, data: bytes) -> Path:
    path.write_bytes(bz2.compress(data))
    return path


def write_xz(path: Path, data: bytes) -> Path:
    path.write_bytes(lzma.compress(data))
    return path


def write_tar_gz(path: Path, members: dict[str, bytes], symlinks: dict[str, str] | None = None) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        directory = tarfile.TarInfo("docs")
        directory.type = tarfile.DIRTYPE
        archive.addfile(directory)
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        for name, target in (symlinks or {}).items():
            link = tarfile.TarInfo(name)
            link.type = tarfile.SYMTYPE
            link.linkname = target
            archive.addfile(link)
    return path


def write_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def write_pdf(path: Path, pages: list[str], title: str | None = None) -> Path:
    """A PDF whose pages carry a text layer (Helvetica text operators); no text makes a blank page."""
    writer = PdfWriter()
    font = writer._add_object(
        DictionaryObject(
            {
                NameObject("/Type"): NameObject("/Font"),
                NameObject("/Subtype"): NameObject("/Type1"),
                NameObject("/BaseFont"): NameObject("/Helvetica"),
            }
        )
    )
    for text in pages:
        page = writer.add_blank_page(612, 792)
        if not text:
            continue
        page[NameObject("/Resources")] = DictionaryObject(
            {NameObject("/Font"): DictionaryObject({NameObject("/F1"): font})}
        )
        lines = "".join(f"({line}) Tj 0 -14 Td " for line in text.split("\n"))
        content = DecodedStreamObject()
        content.set_data(f"BT /F1 12 Tf 72 720 Td {lines}ET".encode())
        page[NameObject("/Contents")] = writer._add_object(content)
    if title:
        writer.add_metadata({"/Title": title})
    with open(path, "wb") as handle:
        writer.write(handle)
    return path


def write_docx(path: Path, title: str, paragraphs: list[str], table: list[list[str]]) -> Path:
    document = docx.Document()
    document.core_properties.title = title
    for text in paragraphs:
        document.add_paragraph(text)
    grid = document.add_table(rows=len(table), cols=len(table[0]))
    for row, values in zip(grid.rows, table, strict=True):
        for cell, value in zip(row.cells, values, strict=True):
            cell.text = value
    document.save(path)
    return path


def write_warc(path: Path, responses: list[dict], *, gzipped: bool = True) -> Path:
    """A WARC of HTTP responses (each {"url", "date", "id", "status", "type", "body"}) and a request."""
    with open(path, "wb") as handle:
        writer = WARCWriter(handle, gzip=gzipped)
        writer.write_record(writer.create_warcinfo_record(path.name, {"software": "tokenworks tests"}))
        for response in responses:
            headers = StatusAndHeaders(response.get("status", "200 OK"), [("Content-Type", response["type"])],
                                       protocol="HTTP/1.1")  # fmt: skip
            warc_headers = {"WARC-Date": response["date"], "WARC-Record-ID": response["id"]}
            asked = StatusAndHeaders(f"GET {response['url']} HTTP/1.1", [("Host", "example.org")], is_http_request=True)
            request = writer.create_warc_record(response["url"], "request", payload=io.BytesIO(b""),
                                                http_headers=asked, warc_headers_dict={"WARC-Date": response["date"]})  # fmt: skip
            writer.write_record(request)
            record = writer.create_warc_record(response["url"], "response", payload=io.BytesIO(response["body"]),
                                               http_headers=headers, warc_headers_dict=warc_headers)  # fmt: skip
            writer.write_record(record)
    return path


def write_wet(path: Path, texts: list[dict]) -> Path:
    """A WET file: conversion records of plain text (each {"url", "date", "id", "text"})."""
    with open(path, "wb") as handle:
        writer = WARCWriter(handle, gzip=True)
        for entry in texts:
            warc_headers = {"WARC-Date": entry["date"], "WARC-Record-ID": entry["id"], "Content-Type": "text/plain"}
            record = writer.create_warc_record(entry["url"], "conversion", payload=io.BytesIO(entry["text"].encode()),
                                               warc_headers_dict=warc_headers)  # fmt: skip
            writer.write_record(record)
    return path
