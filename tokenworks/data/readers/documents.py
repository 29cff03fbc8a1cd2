"""Office documents: PDF (its text layer, through pypdf) and DOCX (through python-docx),
with the page count and title in the metadata.

A PDF with no text layer (a scan) is rejected as such, never read as an empty document:
reading it needs OCR, which is a different tool.
"""

from __future__ import annotations

import re
import zipfile
from typing import IO, Any

from tokenworks.data.readers.inputs import Input, Unreadable
from tokenworks.data.records import Record

_PAGES = re.compile(rb"<Pages>(\d+)</Pages>")


def read_pdf(item: Input, handle: IO[bytes]) -> Record:
    """The text layer of every page; `handle` is the input, seekable (see inputs.seekable)."""
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(handle)
        if reader.is_encrypted and not reader.decrypt(""):
            raise Unreadable("encrypted PDF (needs a password)")
        pages = [page.extract_text() or "" for page in reader.pages]
        title = (reader.metadata.title if reader.metadata else None) or None
    except (PdfReadError, ValueError, KeyError, TypeError, AttributeError, IndexError) as error:
        # pypdf raises more than its own error on malformed files
        raise Unreadable(f"not a readable PDF: {error}") from None
    metadata: dict[str, Any] = {"pages": len(pages), **({"title": str(title).strip()} if title else {})}
    if not any(text.strip() for text in pages):
        return item.rejection("no text layer (a scanned or image-only PDF needs OCR)", **metadata)
    return item.document("\n\n".join(text.strip() for text in pages), **metadata)


def read_docx(item: Input, handle: IO[bytes]) -> Record:
    """Paragraphs and tables in document order, a block a line; `handle` is the input, seekable."""
    import docx
    from docx.opc.exceptions import PackageNotFoundError

    try:
        document = docx.Document(handle)
    except (PackageNotFoundError, KeyError, ValueError, zipfile.BadZipFile) as error:
        raise Unreadable(f"not a readable DOCX: {error}") from None
    pages = _recorded_pages(handle)
    blocks = [_block_text(block) for block in document.iter_inner_content()]
    title = (document.core_properties.title or "").strip()
    metadata: dict[str, Any] = {
        **({"pages": pages} if pages is not None else {}),
        **({"title": title} if title else {}),
    }
    return item.document("\n".join(blocks), **metadata)


def _block_text(block: Any) -> str:
    """A paragraph's text, or a table's rows (cells separated by tabs)."""
    if hasattr(block, "rows"):
        return "\n".join("\t".join(cell.text for cell in row.cells) for row in block.rows)
    return block.text


def _recorded_pages(handle: IO[bytes]) -> int | None:
    """The page count the writing application recorded (docProps/app.xml); DOCX has no pages of its own."""
    handle.seek(0)
    with zipfile.ZipFile(handle) as archive:
        try:
            match = _PAGES.search(archive.read("docProps/app.xml"))
        except KeyError:
            return None
    return int(match.group(1)) if match else None
