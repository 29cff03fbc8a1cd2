"""PII redaction: e-mail addresses, phone numbers and IP addresses become placeholders.

Patterns favour precision over recall, so that numbers in prose and code survive:
- e-mail: local@domain.tld;
- phone: an international number starting with `+`, `(555) 123-4567`, or `555-123-4567` /
  `555.123.4567` (plain space-separated digit groups are left alone: they are usually data);
- IPv4: four dot-separated numbers 0-255; IPv6: eight groups, or a `::` form of at least
  three groups (so slices such as `a[1::2]` are not taken for addresses).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

EMAIL_PLACEHOLDER = "<EMAIL>"
PHONE_PLACEHOLDER = "<PHONE>"
IP_PLACEHOLDER = "<IP_ADDRESS>"

_EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_IPV4 = re.compile(rf"(?<![\w.]){_OCTET}(?:\.{_OCTET}){{3}}(?!\w|\.\d)")
_HEX = r"[0-9A-Fa-f]{1,4}"
_IPV6 = re.compile(
    rf"(?<![\w:])(?:(?:{_HEX}:){{7}}{_HEX}"  # full form
    rf"|(?=(?:{_HEX}:*){{3}})(?:{_HEX}:){{1,6}}:(?:{_HEX}:){{0,5}}{_HEX})(?![\w:])"  # :: form, >= 3 groups
)
_PHONE = re.compile(
    r"(?<![\w+])(?:\+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{1,4}(?:[ .-]\d{2,4}){1,4}"  # +44 20 7946 0958
    r"|\(\d{3}\)[ .-]?\d{3}[ .-]\d{4}"  # (555) 123-4567
    r"|\d{3}([.-])\d{3}\1\d{4})(?![\w])"  # 555-123-4567, 555.123.4567
)


@dataclass(slots=True)
class Redaction:
    text: str
    emails: int
    phones: int
    ips: int

    @property
    def total(self) -> int:
        return self.emails + self.phones + self.ips


def redact_pii(text: str) -> Redaction:
    """Replace PII with placeholders; e-mail first, so an address's digits are not read as a phone."""
    text, emails = _EMAIL.subn(EMAIL_PLACEHOLDER, text)
    text, ipv6 = _IPV6.subn(IP_PLACEHOLDER, text)
    text, ipv4 = _IPV4.subn(IP_PLACEHOLDER, text)
    text, phones = _PHONE.subn(PHONE_PLACEHOLDER, text)
    return Redaction(text=text, emails=emails, phones=phones, ips=ipv4 + ipv6)
