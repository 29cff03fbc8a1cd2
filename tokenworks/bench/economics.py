"""What a token costs in money: a named, dated price book, and dollars per million tokens.

Every price is an assumption the user can change. The packaged book (`pricebook.toml`) holds
on-demand list prices per device-hour; a user's TOML file replaces entries of the same name and
adds new ones. Each figure carries the price, source and date it was computed from.
"""

from __future__ import annotations

import datetime
import re
import tomllib
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from tokenworks.bench.metrics import RunMetrics
from tokenworks.errors import BenchError

DEFAULT_BOOK = "pricebook.toml"
_BOOK_FIELDS = {"name": str, "date": str, "note": str}
_HARDWARE_FIELDS = {
    "name": str,
    "usd_per_hour": float,
    "tdp_watts": float,
    "devices_per_host": int,
    "source": str,
    "date": str,
    "note": str,
}
_OPTIONAL = {"note", "devices_per_host"}


@dataclass(slots=True, frozen=True)
class HardwarePrice:
    name: str
    usd_per_hour: float  # one device for one hour
    tdp_watts: float  # one device's provisioned power
    source: str
    date: str
    devices_per_host: int = 1
    note: str = ""


@dataclass(slots=True)
class PriceBook:
    name: str
    date: str
    note: str
    hardware: dict[str, HardwarePrice] = field(default_factory=dict)  # by match_key(name)

    @classmethod
    def load(cls, path: str | Path | None = None) -> PriceBook:
        """The packaged book, with the entries of the file at `path` (if given) replacing or adding to it.
        A user's [book] table, when it has one, renames and redates the result."""
        text = resources.files("tokenworks.bench").joinpath(DEFAULT_BOOK).read_text(encoding="utf-8")
        book = cls._parse(text, "the packaged price book", book_required=True)
        if path is not None:
            path = Path(path)
            try:
                text = path.read_text(encoding="utf-8")
            except OSError as exc:
                raise BenchError(f"cannot read price book {path}: {exc.strerror or exc}") from exc
            user = cls._parse(text, str(path), book_required=False)
            book.name, book.date, book.note = user.name or book.name, user.date or book.date, user.note or book.note
            book.hardware.update(user.hardware)
        return book

    @classmethod
    def _parse(cls, text: str, origin: str, book_required: bool) -> PriceBook:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise BenchError(f"price book {origin} is not valid TOML: {exc}") from exc
        unknown = set(data) - {"book", "hardware"}
        if unknown:
            raise BenchError(f"price book {origin}: unknown table(s) {sorted(unknown)}; use [book] and [[hardware]]")
        meta = _check(data.get("book", {}), _BOOK_FIELDS, f"price book {origin}, [book]", required=set())
        if book_required and not {"name", "date"} <= set(meta):
            raise BenchError(f"price book {origin}, [book]: give a name and a date")
        book = cls(meta.get("name", ""), meta.get("date", ""), meta.get("note", ""))
        entries = data.get("hardware", [])
        if not isinstance(entries, list):
            raise BenchError(f"price book {origin}: write each hardware entry as [[hardware]]")
        for number, entry in enumerate(entries, 1):
            where = f"price book {origin}, hardware entry {number}" + (
                f" ('{entry['name']}')" if isinstance(entry.get("name"), str) else ""
            )
            values = _check(entry, _HARDWARE_FIELDS, where, required=set(_HARDWARE_FIELDS) - _OPTIONAL)
            for name in ("usd_per_hour", "tdp_watts", "devices_per_host"):
                if name in values and not values[name] > 0:
                    raise BenchError(f"{where}: {name} must be above zero, got {values[name]}")
            key = match_key(values["name"])
            if key in book.hardware:
                raise BenchError(f"{where}: '{values['name']}' is given twice")
            book.hardware[key] = HardwarePrice(**values)
        return book

    def get(self, name: str) -> HardwarePrice:
        try:
            return self.hardware[match_key(name)]
        except KeyError:
            known = ", ".join(h.name for h in self.hardware.values())
            raise BenchError(f"no hardware '{name}' in price book '{self.name}'; it has: {known}") from None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "date": self.date,
            "note": self.note,
            "hardware": [asdict(h) for h in self.hardware.values()],
        }


def match_key(name: str) -> str:
    """Names match ignoring case, spaces, dashes and underscores: 'h100-sxm' finds 'H100 SXM'."""
    return re.sub(r"[\s_-]+", "", name).lower()


def _check(table: Any, schema: dict[str, type], where: str, required: set[str]) -> dict[str, Any]:
    """The table's values converted to the schema's types, naming the field at fault."""
    if not isinstance(table, dict):
        raise BenchError(f"{where}: expected a table of fields")
    unknown = set(table) - set(schema)
    if unknown:
        raise BenchError(f"{where}: unknown field(s) {sorted(unknown)}; known: {', '.join(schema)}")
    missing = required - set(table)
    if missing:
        raise BenchError(f"{where}: missing field(s) {', '.join(sorted(missing))}")
    values = {}
    for name, raw in table.items():
        kind = schema[name]
        if kind is str and isinstance(raw, datetime.date):
            raw = raw.isoformat()  # TOML reads an unquoted date as a date
        accepted = (int, float) if kind is float else kind
        if not isinstance(raw, accepted) or isinstance(raw, bool):
            raise BenchError(f"{where}: {name} must be a {kind.__name__}, got {raw!r}")
        values[name] = kind(raw)
    return values


def usd_per_million_tokens(usd_per_device_hour: float, devices: float, tokens_per_second: float | None) -> float | None:
    """price_per_device_hour * devices / (throughput * 3600) * 1e6; None when nothing was produced."""
    if not tokens_per_second:
        return None
    return usd_per_device_hour * devices / (tokens_per_second * 3600) * 1e6


@dataclass(slots=True, frozen=True)
class TokenCost:
    """Dollars per million tokens of one run, with the assumptions they rest on."""

    hardware: str
    usd_per_device_hour: float
    devices: float
    source: str
    price_date: str
    book: str
    book_date: str
    usd_per_million_tokens: float | None  # input and output tokens
    usd_per_million_output_tokens: float | None
    usd_per_million_good_tokens: float | None  # output tokens of requests that met the SLO

    def to_json(self) -> dict[str, Any]:
        return {f"cost_{k}": v for k, v in asdict(self).items()}


def token_cost(book: PriceBook, hardware: str, metrics: RunMetrics) -> TokenCost:
    price = book.get(hardware)

    def cost(throughput: float | None) -> float | None:
        return usd_per_million_tokens(price.usd_per_hour, metrics.devices, throughput)

    return TokenCost(
        hardware=price.name,
        usd_per_device_hour=price.usd_per_hour,
        devices=metrics.devices,
        source=price.source,
        price_date=price.date,
        book=book.name,
        book_date=book.date,
        usd_per_million_tokens=cost(metrics.total_throughput),
        usd_per_million_output_tokens=cost(metrics.output_throughput),
        usd_per_million_good_tokens=cost(metrics.goodput_tokens),
    )
