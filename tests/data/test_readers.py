"""Each reader on real files written in the test by their own libraries: exact texts, metadata
and drop reasons."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from tokenworks.data.readers import read_files
from tokenworks.data.readers.main_content import html_to_text

from .formats import (
    C_SOURCE,
    ENGLISH,
    FRENCH,
    GERMAN,
    page,
    write_bzip2,
    write_docx,
    write_gzip,
    write_pdf,
    write_tar_gz,
    write_warc,
    write_wet,
    write_xz,
    write_zip,
    write_zstd,
)  # fmt: skip

CATS = "<urn:uuid:00000000-0000-0000-0000-000000000001>"


def read(path: Path, html_extractor: str = "trafilatura") -> list[dict]:
    return read_files([{"path": str(path), "source": "src"}], html_extractor=html_extractor)


def reasons(records: list[dict]) -> dict[str, str]:
    return {record["id"]: record["rejected"]["reason"] for record in records if "rejected" in record}


@pytest.mark.parametrize(
    ("name", "write", "compression"),
    [("notes.txt.gz", write_gzip, "gzip"), ("README.zst", write_zstd, "zstd"), ("notes.bz2", write_bzip2, "bzip2"),
     ("notes.md.xz", write_xz, "xz")],
)  # fmt: skip
def test_compressed_text_is_read_through(tmp_path: Path, name: str, write, compression: str) -> None:
    path = write(tmp_path / name, ENGLISH.encode())
    assert read(path) == [
        {"id": str(path), "text": ENGLISH, "source": "src",
         "metadata": {"path": str(path), "compression": compression, "encoding": "utf-8"}},
    ]  # fmt: skip


def test_compression_is_recognised_by_content_not_suffix(tmp_path: Path) -> None:
    path = write_zstd(tmp_path / "notes.txt", GERMAN.encode())  # zstd, named as plain text
    [record] = read(path)
    assert (record["text"], record["metadata"]["compression"]) == (GERMAN, "zstd")


def test_a_truncated_stream_is_rejected_with_the_reason(tmp_path: Path) -> None:
    path = tmp_path / "cut.txt.gz"
    path.write_bytes(gzip.compress(ENGLISH.encode() * 20, mtime=0)[:40])
    assert reasons(read(path)) == {
        str(path): "corrupt or truncated data: Compressed file ended before the end-of-stream marker was reached"
    }


def test_a_tar_gz_reads_each_member_like_a_file(tmp_path: Path) -> None:
    members = {
        "docs/a.txt": ENGLISH.encode(),
        "docs/page.html": page("Die Bibliothek", GERMAN),
        "docs/run": b"#!/usr/bin/env python3\nprint('hi')\n",
        "docs/logo.png": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
        "docs/inner.txt.gz": gzip.compress(b"inner text", mtime=0),
        "docs/rows.jsonl": b'{"id": "r1", "text": "row one"}\n',
    }
    path = write_tar_gz(tmp_path / "mixed.tar.gz", members, symlinks={"docs/link": "a.txt"})
    archive = str(path)

    def meta(member: str, **more: str) -> dict:
        return {"path": archive, "compression": "gzip", "member": member, **more}

    assert read(path) == [
        {"id": f"{archive}!docs/a.txt", "text": ENGLISH, "source": "src", "metadata": meta("docs/a.txt", encoding="utf-8")},
        {"id": f"{archive}!docs/page.html", "text": f"Die Bibliothek\n{GERMAN}", "source": "src",
         "metadata": meta("docs/page.html", encoding="utf-8", title="Die Bibliothek")},
        {"id": f"{archive}!docs/run", "text": "#!/usr/bin/env python3\nprint('hi')\n", "source": "src",
         "metadata": meta("docs/run", kind="code", programming_language="Python", encoding="utf-8")},
        {"id": f"{archive}!docs/logo.png", "text": "", "source": "src", "metadata": meta("docs/logo.png"),
         "rejected": {"stage": "read", "reason": "binary file (PNG image)"}},
        {"id": f"{archive}!docs/inner.txt.gz", "text": "inner text", "source": "src",
         "metadata": meta("docs/inner.txt.gz", encoding="utf-8")},
        {"id": "r1", "text": "row one", "source": "src", "metadata": meta("docs/rows.jsonl", line=1)},
        {"id": f"{archive}!docs/link", "text": "", "source": "src", "metadata": meta("docs/link"),
         "rejected": {"stage": "read", "reason": "a link or special file in the archive (not followed)"}},
    ]  # fmt: skip


def test_a_zip_reads_its_members_and_a_docx_without_suffix_is_a_document(tmp_path: Path) -> None:
    path = write_zip(tmp_path / "bundle.zip", {"x/a.md": b"# Title\n\nbody", "x/b.c": C_SOURCE.encode()})
    assert [(r["id"], r["text"], r["metadata"]) for r in read(path)] == [
        (f"{path}!x/a.md", "# Title\n\nbody", {"path": str(path), "member": "x/a.md", "encoding": "utf-8"}),
        (f"{path}!x/b.c", C_SOURCE,
         {"path": str(path), "member": "x/b.c", "kind": "code", "programming_language": "C", "encoding": "utf-8"}),
    ]  # fmt: skip
    renamed = write_docx(tmp_path / "minutes", "Minutes", ["Hello."], [["a", "b"]])
    assert [(r["text"], r["metadata"]["title"]) for r in read(renamed)] == [("Hello.\na\tb", "Minutes")]


def test_an_extensionless_latin1_file_is_decoded_and_its_encoding_recorded(tmp_path: Path) -> None:
    path = tmp_path / "LISEZMOI"
    path.write_bytes(FRENCH.encode("latin-1"))
    assert read(path) == [
        {"id": str(path), "text": FRENCH, "source": "src", "metadata": {"path": str(path), "encoding": "cp1252"}}
    ]


def test_binary_files_are_rejected_with_their_type(tmp_path: Path) -> None:
    (tmp_path / "picture").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    (tmp_path / "program").write_bytes(b"\x7fELF\x02\x01\x01\x00" + bytes(64))
    (tmp_path / "blob").write_bytes(b"\x01\x02\x00\x03" * 10)
    files = [{"path": str(tmp_path / name), "source": "src"} for name in ("picture", "program", "blob")]
    assert reasons(read_files(files)) == {
        str(tmp_path / "picture"): "binary file (PNG image)",
        str(tmp_path / "program"): "binary file (ELF executable)",
        str(tmp_path / "blob"): "binary file (of no known type)",
    }


def test_a_pdf_gives_its_text_layer_pages_and_title(tmp_path: Path) -> None:
    path = write_pdf(tmp_path / "report.pdf", ["First page, line one\nline two", "Second page"], title="A report")
    assert read(path) == [
        {"id": str(path), "text": "First page, line one\nline two\n\nSecond page", "source": "src",
         "metadata": {"path": str(path), "pages": 2, "title": "A report"}},
    ]  # fmt: skip


def test_a_pdf_without_a_text_layer_is_rejected_not_read_as_empty(tmp_path: Path) -> None:
    path = write_pdf(tmp_path / "scan.pdf", ["", ""])
    [record] = read(path)
    assert record["rejected"] == {"stage": "read", "reason": "no text layer (a scanned or image-only PDF needs OCR)"}
    assert record["metadata"] == {"path": str(path), "pages": 2}


def test_a_docx_gives_paragraphs_and_tables_in_order_with_title_and_pages(tmp_path: Path) -> None:
    path = write_docx(tmp_path / "minutes.docx", "Minutes", ["Present: all.", "Agreed: the budget."], [["item", "cost"], ["books", "40"]])  # fmt: skip
    assert read(path) == [
        {"id": str(path), "text": "Present: all.\nAgreed: the budget.\nitem\tcost\nbooks\t40", "source": "src",
         "metadata": {"path": str(path), "pages": 1, "title": "Minutes"}},  # pages: as python-docx's template records
    ]  # fmt: skip


def _responses() -> list[dict]:
    base = {"date": "2024-03-01T12:00:00Z", "type": "text/html; charset=utf-8"}
    return [
        {**base, "url": "https://example.org/cats", "id": CATS, "body": page("Opening hours", ENGLISH)},
        {**base, "url": "https://example.org/de", "id": "<urn:uuid:00000000-0000-0000-0000-000000000002>",
         "body": page("Öffnungszeiten", GERMAN).decode().replace("utf-8", "latin-1").encode("latin-1"),
         "type": "text/html; charset=iso-8859-1"},
        {**base, "url": "https://example.org/logo.png", "id": "<urn:uuid:00000000-0000-0000-0000-000000000003>",
         "type": "image/png", "body": b"\x89PNG\r\n\x1a\n"},
        {**base, "url": "https://example.org/gone", "id": "<urn:uuid:00000000-0000-0000-0000-000000000004>",
         "status": "404 Not Found", "body": b"<p>Not here</p>"},
        {**base, "url": "https://example.org/empty", "id": "<urn:uuid:00000000-0000-0000-0000-000000000005>",
         "body": b"<html><body><nav><ul><li><a href='/'>Home</a></li><li><a href='/news'>News</a></li></ul></nav>"
                 b"<footer>Copyright 2024</footer></body></html>"},
    ]  # fmt: skip


# Both extractors keep the page's heading and paragraph: trafilatura a line apart, Resiliparse a blank line.
@pytest.mark.parametrize(("extractor", "apart"), [("trafilatura", "\n"), ("resiliparse", "\n\n")])
@pytest.mark.parametrize("gzipped", [True, False])
def test_a_warc_gives_each_html_response_main_content_url_and_date(
    tmp_path: Path, gzipped: bool, extractor: str, apart: str
) -> None:
    path = write_warc(tmp_path / ("crawl.warc.gz" if gzipped else "crawl.warc"), _responses(), gzipped=gzipped)
    records = read(path, extractor)
    where = {"path": str(path), **({"compression": "gzip"} if gzipped else {})}
    assert records[:2] == [
        {"id": CATS, "text": f"Opening hours{apart}{ENGLISH}", "source": "src",
         "metadata": {**where, "url": "https://example.org/cats", "date": "2024-03-01T12:00:00Z", "title": "Opening hours"}},
        {"id": "<urn:uuid:00000000-0000-0000-0000-000000000002>", "text": f"Öffnungszeiten{apart}{GERMAN}", "source": "src",
         "metadata": {**where, "url": "https://example.org/de", "date": "2024-03-01T12:00:00Z", "title": "Öffnungszeiten"}},
    ]  # fmt: skip
    assert reasons(records) == {
        "<urn:uuid:00000000-0000-0000-0000-000000000003>": "not HTML (image/png)",
        "<urn:uuid:00000000-0000-0000-0000-000000000004>": "HTTP status 404",
        "<urn:uuid:00000000-0000-0000-0000-000000000005>": "no main content in the HTML",
    }
    assert all("Copyright" not in r["text"] and "Sign in" not in r["text"] for r in records)


def test_a_wet_gives_its_text_records(tmp_path: Path) -> None:
    entry = {"url": "https://example.org/de", "date": "2024-03-02T08:00:00Z", "id": CATS, "text": GERMAN}
    path = write_wet(tmp_path / "crawl.warc.wet.gz", [entry])
    assert read(path) == [
        {"id": CATS, "text": GERMAN, "source": "src",
         "metadata": {"path": str(path), "compression": "gzip", "url": entry["url"], "date": entry["date"]}},
    ]  # fmt: skip


@pytest.mark.parametrize(("extractor", "apart"), [("trafilatura", "\n"), ("resiliparse", "\n\n")])
def test_an_html_file_gets_the_same_main_content_extraction(tmp_path: Path, extractor: str, apart: str) -> None:
    path = tmp_path / "hours.html"
    path.write_bytes(page("Opening hours", ENGLISH))
    [record] = read(path, extractor)
    assert record["text"] == f"Opening hours{apart}{ENGLISH}"
    assert record["metadata"] == {"path": str(path), "encoding": "utf-8", "title": "Opening hours"}
    assert html_to_text(page("Opening hours", ENGLISH), extractor=extractor) == record["text"]


NOTICE = "The reading room is closed on public holidays; books may be returned at any time through the door slot."


def test_trafilatura_drops_a_paragraph_seen_more_than_twice_in_one_file_only(tmp_path: Path) -> None:
    # FineWeb's deduplicate=True: a paragraph of over 100 characters goes from its fourth page
    # on. Its memory lasts one file, so pages in files of their own, however batched, keep it.
    bodies = [ENGLISH, GERMAN, FRENCH, ENGLISH.replace("nine", "ten")]
    pages = [page(f"Page {n}", f"{body}</p><p>{NOTICE}") for n, body in enumerate(bodies)]
    base = {"date": "2024-03-01T12:00:00Z", "type": "text/html"}
    crawl = write_warc(tmp_path / "crawl.warc.gz", [
        {**base, "url": f"https://example.org/{n}", "id": f"<urn:uuid:{n}>", "body": body} for n, body in enumerate(pages)
    ])  # fmt: skip
    assert [NOTICE in record["text"] for record in read(crawl)] == [True, True, True, False]
    assert [NOTICE in record["text"] for record in read(crawl, "resiliparse")] == [True, True, True, True]
    for n, body in enumerate(pages):
        (tmp_path / f"{n}.html").write_bytes(body)
    files = [{"path": str(tmp_path / f"{n}.html"), "source": "src"} for n in range(4)]
    assert [NOTICE in record["text"] for record in read_files(files)] == [True, True, True, True]


@pytest.mark.parametrize(
    ("name", "content", "language"),
    [("main.c", C_SOURCE, "C"), ("app.min.js", "var a=1;", "JavaScript"), ("tool", "#!/usr/bin/perl -w\nprint 1;\n", "Perl"),
     ("setup", "#! /bin/sh -e\necho hi\n", "Shell"), ("Makefile", "all:\n\tcc main.c\n", "Makefile")],
)  # fmt: skip
def test_code_is_its_own_kind_by_suffix_name_or_shebang(tmp_path: Path, name: str, content: str, language: str) -> None:
    (tmp_path / name).write_text(content)
    [record] = read(tmp_path / name)
    assert record["text"] == content
    assert record["metadata"] == {"path": str(tmp_path / name), "kind": "code", "programming_language": language,
                                  "encoding": "utf-8"}  # fmt: skip


def test_a_warc_inside_a_tar_and_an_xz_warc_are_read_too(tmp_path: Path) -> None:
    # FastWARC seeks in what it reads: these two reach it as a spooled copy, not as a stream.
    warc = write_warc(tmp_path / "inner.warc.gz", _responses()[:1])
    archive = write_tar_gz(tmp_path / "crawls.tar.gz", {"crawl/a.warc.gz": warc.read_bytes()})
    compressed = write_xz(
        tmp_path / "crawl.warc.xz", write_warc(tmp_path / "x.warc", _responses()[:1], gzipped=False).read_bytes()
    )
    for path, where in [
        (archive, {"path": str(archive), "compression": "gzip", "member": "crawl/a.warc.gz"}),
        (compressed, {"path": str(compressed), "compression": "xz"}),
    ]:
        [record] = read(path)
        assert (record["id"], record["text"]) == (CATS, f"Opening hours\n{ENGLISH}")
        assert record["metadata"] == {**where, "url": "https://example.org/cats", "date": "2024-03-01T12:00:00Z",
                                      "title": "Opening hours"}  # fmt: skip


def test_office_documents_other_than_docx_are_rejected_not_unpacked(tmp_path: Path) -> None:
    path = write_zip(tmp_path / "budget.xlsx", {"[Content_Types].xml": b"<Types/>", "xl/workbook.xml": b"<workbook/>"})
    assert reasons(read(path)) == {
        str(path): "an Office Open XML document other than DOCX (not read; save it as DOCX, PDF or text)"
    }
