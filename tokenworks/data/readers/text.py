"""Bytes to text: UTF-8 when they are UTF-8 (most are, and it is the cheapest check), else the
encoding charset-normalizer detects, recorded in the document's metadata."""

from __future__ import annotations

from tokenworks.data.readers.inputs import PROBE_BYTES, Unreadable

# charset-normalizer reads samples of at most this many bytes; more only costs time.
_DETECTION_BYTES = 1 << 20


def decode(data: bytes) -> tuple[str, str]:
    """(text, encoding) of a text file's bytes; Unreadable when they are binary or of no known encoding."""
    if b"\x00" in data[:PROBE_BYTES] and not data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise Unreadable("binary file (NUL bytes)")
    try:
        return data.decode("utf-8-sig"), "utf-8"
    except UnicodeDecodeError as error:
        not_utf8 = error.start
    from charset_normalizer import from_bytes  # only files that are not UTF-8 pay for the import

    has_bom = data.startswith((b"\xff\xfe", b"\xfe\xff"))
    # Without a byte order mark and without NUL bytes, UTF-16 and UTF-32 are a detector's
    # misreading of a few bytes of another encoding (four Latin-1 bytes read as two CJK characters).
    candidates = [
        match.encoding
        for match in from_bytes(data[:_DETECTION_BYTES])
        if has_bom or not match.encoding.startswith(("utf_16", "utf_32"))
    ]
    if not candidates:
        raise Unreadable(f"binary, or text of no detectable encoding (not UTF-8 at byte {not_utf8})")
    encoding = candidates[0]
    try:
        return data.decode(encoding), encoding
    except (UnicodeDecodeError, LookupError):
        # The sample decoded but the rest does not: keep what decodes, mark what does not.
        return data.decode(encoding, errors="replace"), encoding
