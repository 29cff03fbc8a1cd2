"""Which format an input is in: by its first bytes where they are unambiguous, else by its
suffix, else by looking (HTML, a script's shebang, binary signatures, or text).

Content wins over the suffix for the formats with a signature (WARC, PDF, tar, zip, and
compression, see compression.py), so a `.txt` that is really a PDF is read as a PDF; the
suffix decides among text formats, which have no signature.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath

from tokenworks.data.readers.source_code import language_from_name, language_from_shebang

TEXT_SUFFIXES = (".txt", ".md", ".rst")
HTML_SUFFIXES = (".html", ".htm", ".xhtml")

# Binary formats worth naming in a rejection: (signature, offset, what it is).
_BINARY_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", 0, "PNG image"), (b"\xff\xd8\xff", 0, "JPEG image"), (b"GIF8", 0, "GIF image"),
    (b"RIFF", 0, "RIFF media (WebP, WAV or AVI)"), (b"II*\x00", 0, "TIFF image"), (b"MM\x00*", 0, "TIFF image"),
    (b"\x00\x00\x01\x00", 0, "ICO image"), (b"BM", 0, "BMP image"), (b"\x7fELF", 0, "ELF executable"),
    (b"MZ", 0, "Windows executable"), (b"\xca\xfe\xba\xbe", 0, "Java class or Mach-O binary"),
    (b"\xcf\xfa\xed\xfe", 0, "Mach-O binary"), (b"SQLite format 3\x00", 0, "SQLite database"),
    (b"OggS", 0, "Ogg media"), (b"ID3", 0, "MP3 audio"), (b"fLaC", 0, "FLAC audio"), (b"ftyp", 4, "MP4 media"),
    (b"\x1a\x45\xdf\xa3", 0, "Matroska or WebM media"), (b"wOFF", 0, "WOFF font"), (b"wOF2", 0, "WOFF2 font"),
    (b"\x00\x01\x00\x00\x00", 0, "TrueType font"), (b"OTTO", 0, "OpenType font"),
    (b"7z\xbc\xaf\x27\x1c", 0, "7-Zip archive"), (b"Rar!\x1a\x07", 0, "RAR archive"),
    (b"\x04\x22\x4d\x18", 0, "LZ4 data"), (b"!<arch>\n", 0, "ar archive (.deb or static library)"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", 0, "OLE2 document (legacy Office)"), (b"PAR1", 0, "parquet file"),
    (b"\x93NUMPY", 0, "NumPy array"), (b"\x80\x04\x95", 0, "Python pickle"), (b"\x1f\x9d", 0, "compress (.Z) data"),
    (b"\xf7\x02", 0, "DVI document"), (b"\xde\x12\x04\x95", 0, "gettext catalog (.mo)"),
    (b"\x95\x04\x12\xde", 0, "gettext catalog (.mo)"),
)  # fmt: skip
# Control characters text does not have (tab, newlines, form feed, backspace and escape it may).
_CONTROL_BYTES = bytes(byte for byte in range(32) if byte not in b"\t\n\r\x0c\x08\x1b") + b"\x7f"


@dataclass(frozen=True, slots=True)
class Format:
    kind: str  # text, html, code, jsonl, parquet, pdf, docx, warc, tar, zip, binary
    detail: str | None = None  # the programming language of code, the type of binary


def identify(name: str, head: bytes) -> Format:
    """The format of an (already decompressed) input named `name` that starts with `head`."""
    suffix = PurePosixPath(name).suffix.lower()
    if head.startswith(b"WARC/"):  # WARC and WET alike, whatever the suffix
        return Format("warc")
    if head.startswith(b"%PDF-"):
        return Format("pdf")
    if len(head) > 262 and head[257:262] == b"ustar":
        return Format("tar")
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return Format("docx" if suffix == ".docx" else "zip")
    if head.startswith(b"PAR1") and suffix == ".parquet":
        return Format("parquet")
    if suffix == ".jsonl":
        return Format("jsonl")
    if suffix in TEXT_SUFFIXES:
        return Format("text")
    if suffix in HTML_SUFFIXES:
        return Format("html")
    language = language_from_name(name)
    if language:
        return Format("code", language)
    # Unknown or no suffix: look at the bytes.
    if suffix == ".tar":  # an old tar, without the ustar mark
        return Format("tar")
    if _looks_binary(head):
        what = next((what for signature, offset, what in _BINARY_SIGNATURES
                     if head[offset : offset + len(signature)] == signature), None)  # fmt: skip
        return Format("binary", what)
    language = language_from_shebang(head)
    if language:
        return Format("code", language)
    if _looks_like_html(head):
        return Format("html")
    return Format("text")  # decoding decides (see text.py): undecodable bytes are rejected there


def _looks_binary(head: bytes) -> bool:
    """NUL bytes, or many control characters, outside UTF-16 and UTF-32 (which have a BOM)."""
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return False
    controls = sum(head.count(bytes([byte])) for byte in _CONTROL_BYTES)
    return b"\x00" in head or controls > len(head) // 10


def _looks_like_html(head: bytes) -> bool:
    start = head.lstrip(b"\xef\xbb\xbf \t\r\n")[:64].lower()
    return start.startswith((b"<!doctype html", b"<html"))
