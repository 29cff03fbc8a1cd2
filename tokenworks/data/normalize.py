"""Text normalisation: one canonical form per text, so equal texts hash equal.

Unicode NFC (composed characters), control characters removed (tab and newline kept),
Unicode line and paragraph separators made newlines, runs of spaces and tabs inside a line
collapsed to one space, trailing spaces dropped, more than one blank line collapsed to one,
and the text stripped at both ends. Code keeps its indentation and spacing: only its line
breaks, control characters and trailing spaces are normalised (`normalize_code`).
"""

from __future__ import annotations

import re
import unicodedata

# C0 and C1 controls except \t and \n, plus DEL; \r is handled as a line break first.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_LINE_BREAKS = re.compile(r"\r\n?|[\u2028\u2029\x0b\x0c\x85]")
_SPACES = re.compile(r"[ \t\u00a0\u2000-\u200a\u202f\u205f\u3000]+")
_TRAILING_SPACE = re.compile(r" +\n")
_BLANK_LINES = re.compile(r"\n{3,}")
_TRAILING_WHITESPACE = re.compile(r"[ \t]+$", re.MULTILINE)


def normalize_text(text: str) -> str:
    text = unicodedata.normalize("NFC", text)
    text = _LINE_BREAKS.sub("\n", text)
    text = _CONTROL.sub("", text)
    text = _SPACES.sub(" ", text)
    text = _TRAILING_SPACE.sub("\n", text)
    text = _BLANK_LINES.sub("\n\n", text)
    return text.strip()


def normalize_code(text: str) -> str:
    text = unicodedata.normalize("NFC", text)
    text = _LINE_BREAKS.sub("\n", text)
    text = _CONTROL.sub("", text)
    text = _TRAILING_WHITESPACE.sub("", text)
    return text.strip("\n")
