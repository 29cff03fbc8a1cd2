"""Price arithmetic, and loading price books: the packaged defaults, a user's overrides, and errors that
name the file, entry and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from tokenworks.bench.economics import PriceBook, token_cost, usd_per_million_tokens
from tokenworks.bench.metrics import summarize
from tokenworks.bench.records import RequestRecord
from tokenworks.bench.slo import SLO
from tokenworks.errors import BenchError

USER_BOOK = """
[book]
name = "our contract"
date = 2026-01-15

[[hardware]]
name = "h100-sxm"
usd_per_hour = 2
tdp_watts = 700
source = "our invoice"
date = "2026-01"

[[hardware]]
name = "Test GPU"
usd_per_hour = 2.0
tdp_watts = 300
devices_per_host = 4
source = "a test"
date = 2026-01-01
"""


def test_dollars_per_million_tokens() -> None:
    assert usd_per_million_tokens(2.0, 1, 1000) == pytest.approx(5 / 9)  # $2/h at 1000 tok/s: $0.5556 per M
    assert usd_per_million_tokens(2.0, 8, 1000) == pytest.approx(40 / 9)
    assert usd_per_million_tokens(2.0, 1, 0.0) is None
    assert usd_per_million_tokens(2.0, 1, None) is None


def test_the_packaged_book() -> None:
    book = PriceBook.load()
    assert book.name == "tokenworks default" and "assumption" in book.note
    assert {"H100 SXM", "H200", "A100 80GB", "L40S", "L4", "B200", "CPU host"} <= {
        h.name for h in book.hardware.values()
    }
    h100 = book.get("h100_sxm")
    assert h100.tdp_watts == 700 and h100.devices_per_host == 8 and "CoreWeave" in h100.source
    assert all(h.usd_per_hour > 0 and h.tdp_watts > 0 and h.source and h.date for h in book.hardware.values())
    with pytest.raises(BenchError, match="no hardware 'TPU v9' in price book 'tokenworks default'; it has: H100 SXM"):
        book.get("TPU v9")


def test_a_user_book_overrides_and_extends(tmp_path: Path) -> None:
    path = tmp_path / "prices.toml"
    path.write_text(USER_BOOK)
    book = PriceBook.load(path)
    assert (book.name, book.date) == ("our contract", "2026-01-15")
    assert book.get("H100 SXM").usd_per_hour == 2.0 and book.get("H100 SXM").source == "our invoice"
    assert book.get("test gpu").date == "2026-01-01"  # a TOML date becomes its ISO text
    assert book.get("L4").usd_per_hour == PriceBook.load().get("L4").usd_per_hour
    assert book.to_json()["name"] == "our contract" and len(book.to_json()["hardware"]) == 8


def test_token_cost_from_a_run(tmp_path: Path) -> None:
    path = tmp_path / "prices.toml"
    path.write_text(USER_BOOK)
    book = PriceBook.load(path)
    # one request over a 1 s window: 1500 in + 500 out tokens, E2E 1 s; two devices
    records = [RequestRecord(0, False, None, 0.0, 0.5, 1.0, [0.5, 1.0], [250, 250], 1500, 500, "usage")]
    cost = token_cost(book, "test-gpu", summarize(records, slo=SLO.parse("e2e=2s"), devices=2))
    assert (cost.hardware, cost.usd_per_device_hour, cost.devices, cost.source, cost.book) == (
        "Test GPU",
        2.0,
        2,
        "a test",
        "our contract",
    )
    assert cost.usd_per_million_tokens == pytest.approx(2 * 2 / (2000 * 3600) * 1e6)
    assert cost.usd_per_million_output_tokens == pytest.approx(2 * 2 / (500 * 3600) * 1e6)
    assert cost.usd_per_million_good_tokens == cost.usd_per_million_output_tokens
    missed = token_cost(book, "test-gpu", summarize(records, slo=SLO.parse("e2e=500ms"), devices=2))
    assert missed.usd_per_million_good_tokens is None  # no good tokens: no price per good token
    assert cost.to_json()["cost_usd_per_million_tokens"] == cost.usd_per_million_tokens


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[[hardware]]\nname = 'X'\nusd_per_hour = 1\ntdp_watts = 5\nsource = 's'\n", "hardware entry 1 ('X'): missing field(s) date"),
        ("[[hardware]]\nname = 'X'\nusd_per_hour = 'cheap'\ntdp_watts = 5\nsource = 's'\ndate = 'd'\n",
         "hardware entry 1 ('X'): usd_per_hour must be a float, got 'cheap'"),
        ("[[hardware]]\nname = 'X'\nusd_per_hour = -1\ntdp_watts = 5\nsource = 's'\ndate = 'd'\n",
         "hardware entry 1 ('X'): usd_per_hour must be above zero, got -1.0"),
        ("[[hardware]]\nname = 'X'\nusd_per_hour = 1\ntdp_watt = 5\nsource = 's'\ndate = 'd'\n",
         "hardware entry 1 ('X'): unknown field(s) ['tdp_watt']"),
        ("[[hardware]]\nusd_per_hour = 1\n", "hardware entry 1: missing field(s) date, name, source, tdp_watts"),
        ("[book]\nname = 3\n", "[book]: name must be a str, got 3"),
        ("[prices]\nx = 1\n", "unknown table(s) ['prices']; use [book] and [[hardware]]"),
        ("[book\n", "is not valid TOML"),
        ("hardware = 3\n", "write each hardware entry as [[hardware]]"),
    ],
)  # fmt: skip
def test_book_errors_name_file_entry_and_field(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(BenchError) as error:
        PriceBook.load(path)
    assert f"price book {path}" in str(error.value) and message in str(error.value)


def test_book_file_errors(tmp_path: Path) -> None:
    with pytest.raises(BenchError, match=r"cannot read price book .*missing\.toml"):
        PriceBook.load(tmp_path / "missing.toml")
    twice = tmp_path / "twice.toml"
    entry = "[[hardware]]\nname = '{}'\nusd_per_hour = 1\ntdp_watts = 5\nsource = 's'\ndate = 'd'\n"
    twice.write_text(entry.format("My GPU") + entry.format("my-gpu"))
    with pytest.raises(BenchError, match=r"hardware entry 2 \('my-gpu'\): 'my-gpu' is given twice"):
        PriceBook.load(twice)
