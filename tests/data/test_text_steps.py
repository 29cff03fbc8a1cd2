"""Normalisation, PII redaction and HTML main-content extraction on crafted inputs."""

from __future__ import annotations

import pytest

from tokenworks.data.normalize import normalize_text
from tokenworks.data.pii import redact_pii
from tokenworks.data.readers.main_content import html_to_text


def test_normalisation_composes_strips_controls_and_collapses_whitespace() -> None:
    raw = "  Cafe\u0301\x00 \t au\u00a0lait \r\n\r\n\r\n\r\nnext\u2028line  \x7f"
    assert normalize_text(raw) == "Café au lait\n\nnext\nline"


def test_normalisation_is_idempotent() -> None:
    text = normalize_text("a  b\n\n\n c \t\n")
    assert normalize_text(text) == text == "a b\n\n c"


@pytest.mark.parametrize(
    ("text", "redacted", "counts"),
    [
        ("write to ana.b+news@mail.example.org today", "write to <EMAIL> today", (1, 0, 0)),
        ("call +44 20 7946 0958 or (555) 123-4567", "call <PHONE> or <PHONE>", (0, 2, 0)),
        ("or 555-123-4567, 555.123.4567", "or <PHONE>, <PHONE>", (0, 2, 0)),
        ("hosts 10.0.0.1 and 2001:db8::8a2e:370:7334", "hosts <IP_ADDRESS> and <IP_ADDRESS>", (0, 0, 2)),
        ("full fe80:0:0:0:202:b3ff:fe1e:8329 form", "full <IP_ADDRESS> form", (0, 0, 1)),
    ],
)
def test_pii_is_replaced_by_placeholders(text: str, redacted: str, counts: tuple[int, int, int]) -> None:
    result = redact_pii(text)
    assert result.text == redacted
    assert (result.emails, result.phones, result.ips) == counts


@pytest.mark.parametrize(
    "text",
    [
        "x[1::2] at 12:30:45 on 2024-01-15",
        "Python 3.11.7 and numbers 1999 2000 2001",
        "999.1.1.1 is not an address, nor 1.2.3.4.5",
        "an @decorator and user@localhost",
    ],
)
def test_ordinary_numbers_and_code_are_left_alone(text: str) -> None:
    assert redact_pii(text).text == text


@pytest.mark.parametrize(
    ("extractor", "text"),
    [("trafilatura", "One & two, and a sentence long enough to be content."),  # favor_precision drops the lone h1
     ("resiliparse", "Header\n\nOne & two, and a sentence long enough to be content.")],
)  # fmt: skip
def test_html_keeps_the_main_content_only(extractor: str, text: str) -> None:
    html = (
        "<html><head><title>T</title><style>p{color:red}</style></head>"
        "<body><nav><a href='/'>Home</a> <a href='/news'>News</a></nav><h1>Header</h1>"
        "<script>var x = 1;</script><p>One &amp; two, and a sentence long enough to be content.</p>"
        "<noscript>enable js</noscript><footer>Copyright 2024</footer></body></html>"
    )
    assert normalize_text(html_to_text(html, extractor=extractor)) == text
