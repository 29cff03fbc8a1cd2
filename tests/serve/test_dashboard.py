"""The live dashboard: its figures equal /metrics, in /dashboard/data and as headless Chromium renders the page."""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import os
import re
import shutil
import signal
import subprocess
import time
from decimal import ROUND_HALF_UP, Decimal
from html.parser import HTMLParser

import httpx
import pytest
from openai import OpenAI

from tokenworks.serve.dashboard import MAX_FRONTIER_BYTES, histogram_quantile, read_frontier

from .conftest import MODEL_NAME, metric_value, start_server

API_KEY = "dashboard-key"
MAX_NUM_SEQS = 2  # so that a burst of requests leaves some waiting
HEADER = "label,concurrency,request_rate,interactivity,output_throughput_per_device"
FRONTIER_CSV = (
    "label,concurrency,request_rate,interactivity,output_throughput_per_device,goodput\n"
    "nano,1,,41.5,41.5,1.0\n"
    "nano,8,,20.25,150.75,7.5\n"
    "nano-fp16,,4.5,12.0,180.125,3.0\n"
)
EXPECTED_POINTS = [  # as the file above says, extra column left out
    {"label": "nano", "concurrency": 1.0, "request_rate": None, "interactivity": 41.5,
     "output_throughput_per_device": 41.5},
    {"label": "nano", "concurrency": 8.0, "request_rate": None, "interactivity": 20.25,
     "output_throughput_per_device": 150.75},
    {"label": "nano-fp16", "concurrency": None, "request_rate": 4.5, "interactivity": 12.0,
     "output_throughput_per_device": 180.125},
]  # fmt: skip
LATENCIES = {
    "ttft": "tokenworks:time_to_first_token_seconds",
    "itl": "tokenworks:inter_token_latency_seconds",
    "e2e": "tokenworks:e2e_request_latency_seconds",
}
QUANTILES = {"p50": 0.5, "p90": 0.9, "p99": 0.99}
LONG_PROMPT = "The quick brown fox jumps over the lazy dog while the cat watches from the garden wall. " * 3


# --- histogram_quantile and frontier files, without a server --------------------------------------------------------

BUCKETS = [(0.25, 2.0), (0.5, 6.0), (1.0, 8.0), (float("inf"), 10.0)]


@pytest.mark.parametrize(
    ("q", "expected"),
    [(0.1, 0.125), (0.5, 0.4375), (0.8, 1.0), (0.9, 1.0), (0.99, 1.0)],
)  # 0.9 and 0.99 rank in the +Inf bucket: the highest finite bound, as Prometheus answers
def test_histogram_quantile_interpolates_within_the_bucket(q: float, expected: float) -> None:
    assert histogram_quantile(q, BUCKETS) == expected


def test_histogram_quantile_of_nothing_is_none() -> None:
    assert histogram_quantile(0.5, [(0.25, 0.0), (float("inf"), 0.0)]) is None
    assert histogram_quantile(0.5, [(float("inf"), 3.0)]) is None
    assert histogram_quantile(0.5, []) is None


def test_read_frontier_takes_the_known_columns_and_tolerates_others(tmp_path) -> None:
    (tmp_path / "frontier.csv").write_text(FRONTIER_CSV)
    frontier = read_frontier(tmp_path)
    assert [dataclasses.asdict(p) for p in frontier.points] == EXPECTED_POINTS
    assert frontier.message is None and frontier.path == str(tmp_path / "frontier.csv")
    assert frontier.modified == (tmp_path / "frontier.csv").stat().st_mtime


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (None, "no benchmark yet: {path} does not exist"),
        (HEADER + "\n", "{path} has no points yet"),
        ("label,interactivity\nx,1\n", "{path} lacks the column(s) concurrency, request_rate, "
         "output_throughput_per_device: its header must name " + HEADER),
        (HEADER + "\nnano,1,,fast,2\n", "{path} line 2: interactivity 'fast' is not a finite number"),
        (HEADER + "\nnano,1,,1,2\nnano,2,,nan,2\n", "{path} line 3: interactivity 'nan' is not a finite number"),
        (HEADER + "\nnano,1,,1\n", "{path} line 2: output_throughput_per_device '' is not a finite number"),
        (HEADER + "\nnano,x,,1,2\n", "{path} line 2: concurrency 'x' is not a finite number"),
        ('label,"concurrency\n', "{path} line 1 is not valid CSV: unexpected end of data"),
        (HEADER + '\nnano,1,,"1"2,3\n', """{path} line 2 is not valid CSV: ',' expected after '"'"""),
        ("x" * (MAX_FRONTIER_BYTES + 1), "{path} is 1048577 bytes; the dashboard reads frontier files of up to 1 MiB"),
    ],
)  # fmt: skip
def test_read_frontier_says_what_is_missing_or_malformed(tmp_path, text: str | None, message: str) -> None:
    path = tmp_path / "frontier.csv"
    if text is not None:
        path.write_text(text)
    frontier = read_frontier(tmp_path)
    assert frontier.points == []
    assert frontier.message == message.format(path=path)


def test_read_frontier_without_a_directory_says_how_to_give_one() -> None:
    frontier = read_frontier(None)
    assert (frontier.points, frontier.path) == ([], None)
    assert frontier.message == "no benchmark results: start the server with --bench-results DIR"


# --- a live server ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bench_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("bench-results")


@pytest.fixture(scope="module")
def dash_server(serve_model_dir, bench_dir):
    """A server with an API key (the dashboard stays open, as /metrics does) and --bench-results."""
    engine_options = {"max_num_seqs": MAX_NUM_SEQS}
    running = start_server(serve_model_dir, api_key=API_KEY, bench_results=bench_dir, engine_options=engine_options)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def served(dash_server):
    """Some traffic (prefix-cache hits, streaming, n=2, a concurrent burst, errors), then a quiescent server."""
    client = openai_client(dash_server)
    extra = {"ignore_eos": True}
    for _ in range(3):  # the same long prompt: the second and third find its blocks in the prefix cache
        client.completions.create(model=MODEL_NAME, prompt=LONG_PROMPT, max_tokens=8, extra_body=extra)
    client.completions.create(model=MODEL_NAME, prompt="Two choices", max_tokens=5, n=2, seed=1, extra_body=extra)
    stream = client.chat.completions.create(
        model=MODEL_NAME, messages=[{"role": "user", "content": "Hello"}], max_completion_tokens=6, stream=True,
        stream_options={"include_usage": True}, extra_body=extra,
    )  # fmt: skip
    assert [c.usage.completion_tokens for c in stream if c.usage] == [6]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        burst = [
            pool.submit(client.completions.create, model=MODEL_NAME, prompt=f"Request {i}", max_tokens=4 + i,
                        extra_body=extra)
            for i in range(8)
        ]  # fmt: skip
        assert [f.result().usage.completion_tokens for f in burst] == [4 + i for i in range(8)]
    with httpx.Client(base_url=dash_server.url, timeout=60) as http:
        assert http.get("/v1/models").status_code == 401  # no key
        auth = {"Authorization": f"Bearer {API_KEY}"}
        assert http.post("/v1/completions", json={"prompt": "x", "model": "missing"}, headers=auth).status_code == 404
        wait_until_quiescent(http)
        yield http


def openai_client(server) -> OpenAI:
    return OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0)


def wait_until_quiescent(http: httpx.Client, timeout: float = 60.0) -> None:
    """Until nothing runs, waits, is open or holds KV blocks, and two scrapes agree on every figure."""
    deadline, last = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        figures = expected_figures(http.get("/metrics").text)
        idle = all(figures[name] == 0 for name in ("running", "waiting", "open", "kv-cache-usage"))
        if idle and figures == last:
            return
        last = figures
        time.sleep(0.2)
    raise AssertionError("the server did not become quiescent")


def buckets(text: str, histogram: str) -> list[tuple[float, float]]:
    """(upper bound, cumulative count) of a histogram in Prometheus text, summed over other labels."""
    counts: dict[float, float] = {}
    for bound, value in re.findall(rf'^{re.escape(histogram)}_bucket{{[^}}]*le="([^"]+)"[^}}]*}} (\S+)$', text, re.M):
        counts[float(bound)] = counts.get(float(bound), 0.0) + float(value)
    return sorted(counts.items())


def expected_figures(text: str) -> dict[str, float | None]:
    """Every figure the dashboard shows, by element id, computed from /metrics text."""
    value = lambda name: metric_value(text, f"tokenworks:{name}")  # noqa: E731
    errors = sum(
        float(value)
        for status, value in re.findall(r'^tokenworks:http_requests_total{[^}]*status="(\d+)"[^}]*} (\S+)$', text, re.M)
        if int(status) >= 400
    )  # fmt: skip
    figures = {
        "running": value("num_requests_running"), "waiting": value("num_requests_waiting"),
        "open": value("num_requests_open"), "kv-cache-usage": value("kv_cache_usage_perc"),
        "prefix-cache-hit-rate": value("prefix_cache_hit_rate"), "http-errors": errors,
        "prompt-tokens": value("prompt_tokens_total"), "cached-prompt-tokens": value("prompt_tokens_cached_total"),
        "generation-tokens": value("generation_tokens_total"), "finished-total": value("request_success_total"),
    }  # fmt: skip
    for reason in ("stop", "length", "abort"):
        figures[f"finished-{reason}"] = metric_value(
            text, "tokenworks:request_success_total", {"finished_reason": reason}
        )
    for key, name in LATENCIES.items():
        figures[f"{key}-count"] = metric_value(text, f"{name}_count")
        for label, q in QUANTILES.items():
            figures[f"{key}-{label}"] = histogram_quantile(q, buckets(text, name))
    return figures


def data_figures(data: dict) -> dict[str, float | None]:
    """The same figures from /dashboard/data."""
    figures = {
        "running": data["running"], "waiting": data["waiting"], "open": data["open"],
        "kv-cache-usage": data["kv_cache_usage"], "prefix-cache-hit-rate": data["prefix_cache_hit_rate"],
        "http-errors": data["http_errors"], "prompt-tokens": data["prompt_tokens"],
        "cached-prompt-tokens": data["cached_prompt_tokens"], "generation-tokens": data["generation_tokens"],
    }  # fmt: skip
    figures.update({f"finished-{reason}": value for reason, value in data["finished"].items()})
    for key, values in data["latency"].items():
        figures.update({f"{key}-{column}": value for column, value in values.items()})
    return figures


def shown(figure: str, value: float | None) -> str:
    """A figure as the page displays it: percentiles in ms and shares in % with one decimal (JavaScript's toFixed
    rounds the exact binary value half up), everything else a whole count."""
    if value is None:
        return "–"
    if figure.endswith(tuple(QUANTILES)) or figure in ("kv-cache-usage", "prefix-cache-hit-rate"):
        scaled = value * (1000 if figure.endswith(tuple(QUANTILES)) else 100)
        return str(Decimal(scaled).quantize(Decimal("0.1"), rounding=ROUND_HALF_UP))
    assert value == int(value), (figure, value)
    return str(int(value))


def test_dashboard_page_is_one_self_contained_html_page_open_without_a_key(dash_server) -> None:
    response = httpx.get(f"{dash_server.url}/dashboard", timeout=30)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    page = response.text
    assert 'id="dashboard"' in page and "<script>" in page
    assert not re.search(r"<(script|link|img|iframe)\b[^>]*\b(src|href)=\"(?!data:)", page)  # nothing from elsewhere
    assert not re.search(r"@import|url\(", page)


def test_dashboard_data_equals_metrics(served) -> None:
    data = served.get("/dashboard/data").json()  # no key: open, like /metrics
    text = served.get("/metrics").text
    expected = expected_figures(text)
    assert data_figures(data) == expected
    assert expected["prefix-cache-hit-rate"] > 0 and expected["cached-prompt-tokens"] > 0
    assert expected["finished-total"] == 3 + 2 + 1 + 8 and expected["http-errors"] == 2
    assert expected["generation-tokens"] == 3 * 8 + 2 * 5 + 6 + sum(4 + i for i in range(8))
    assert all(expected[f"{key}-p99"] is not None for key in LATENCIES)
    assert (data["model"], data["engine_healthy"]) == (MODEL_NAME, True)
    assert served.get("/v1/models").status_code == 401  # while the API itself needs the key
    assert metric_value(served.get("/metrics").text, "tokenworks:http_requests_total", {"path": "/dashboard/data"}) == 1


def test_dashboard_data_reads_the_frontier_on_every_poll(served, bench_dir) -> None:
    path = bench_dir / "frontier.csv"
    path.write_text("label,interactivity\nnano,1\n")
    response = served.get("/dashboard/data")
    assert response.status_code == 200
    frontier = response.json()["frontier"]
    assert frontier["points"] == [] and frontier["message"].startswith(f"{path} lacks the column(s) concurrency")
    path.write_bytes(b"\xff\xfe\x00garbage")
    frontier = served.get("/dashboard/data").json()["frontier"]
    assert frontier["points"] == [] and frontier["message"].startswith(f"{path} cannot be read:")
    path.write_text(FRONTIER_CSV)
    frontier = served.get("/dashboard/data").json()["frontier"]
    assert (frontier["points"], frontier["message"], frontier["path"]) == (EXPECTED_POINTS, None, str(path))


class RenderedPage(HTMLParser):
    """The dumped DOM's figures: elements with an id, frontier points and frontier table rows."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.elements: dict[str, dict] = {}
        self.points: list[dict[str, str]] = []
        self.rows: list[list[str]] = []
        self._text_of: str | None = None
        self._in_row = False
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list) -> None:
        attrs = dict(attrs)
        if "id" in attrs:
            self.elements[attrs["id"]] = {"attrs": attrs, "text": ""}
            self._text_of = attrs["id"]
        if attrs.get("class") == "frontier-point":
            self.points.append(attrs)
        if tag == "tr" and attrs.get("class") == "frontier-row":
            self.rows.append([])
            self._in_row = True
        elif tag == "td" and self._in_row:
            self.rows[-1].append("")

    def handle_data(self, data: str) -> None:
        if self._text_of is not None:
            self.elements[self._text_of]["text"] += data
        if self._in_row and self.rows[-1]:
            self.rows[-1][-1] += data

    def handle_endtag(self, tag: str) -> None:
        self._text_of = None
        if tag == "tr":
            self._in_row = False


@pytest.fixture()
def browser() -> str:
    """Chromium's path, or a skip (before the server and its traffic start) where there is none."""
    found = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
    if found is None:
        pytest.skip("chromium not installed: `apt-get install chromium` (as .ci/run does) to run this test")
    return found


def render_in_chromium(browser: str, url: str, profile_dir) -> RenderedPage:
    command = [
        browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", f"--user-data-dir={profile_dir}",
        "--virtual-time-budget=2500", "--dump-dom", url,
    ]  # fmt: skip
    # virtual time: three one-second polls, each as soon as the server has answered the last
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    page = RenderedPage(result.stdout)
    assert "dashboard" in page.elements, f"no dashboard in the DOM Chromium dumped: {result.stdout[-2000:]!r}"
    return page


@contextlib.contextmanager
def frozen_mid_batch(server, http: httpx.Client, requests: int = 6, max_tokens: int = 200):
    """Requests running and waiting while the engine-core process is stopped (SIGSTOP), so its gauges hold still.

    A stopped core answers no stats call: /metrics and /dashboard/data both fall back, after
    their timeout, to the last step statistics the core sent, which no longer change.
    """
    client = openai_client(server)
    with concurrent.futures.ThreadPoolExecutor(requests) as pool:
        burst = [
            pool.submit(client.completions.create, model=MODEL_NAME, prompt=f"Long request {i}", max_tokens=max_tokens,
                        extra_body={"ignore_eos": True})
            for i in range(requests)
        ]  # fmt: skip
        deadline = time.monotonic() + 60
        while True:
            stats = server.run(server.state.engine.call("stats")).scheduler
            if (stats.num_running, stats.num_waiting) == (MAX_NUM_SEQS, requests - MAX_NUM_SEQS):
                break
            assert time.monotonic() < deadline, "the burst never filled the batch"
            time.sleep(0.01)
        pid = server.state.engine.client.process.pid
        os.kill(pid, signal.SIGSTOP)
        try:
            time.sleep(0.5)  # the server reads the outputs the core sent before it stopped
            figures = expected_figures(http.get("/metrics").text)
            assert figures == expected_figures(http.get("/metrics").text)  # holding still
            yield figures
        finally:
            os.kill(pid, signal.SIGCONT)
        assert [f.result().usage.completion_tokens for f in burst] == [max_tokens] * requests


def test_chromium_renders_the_figures_of_metrics(browser, dash_server, served, bench_dir, tmp_path) -> None:
    (bench_dir / "frontier.csv").write_text(FRONTIER_CSV)
    with frozen_mid_batch(dash_server, served) as before:
        page = render_in_chromium(browser, f"{dash_server.url}/dashboard", tmp_path / "profile")
        expected = expected_figures(served.get("/metrics").text)
    assert expected == before
    assert expected["running"] > 0 and expected["waiting"] > 0 and expected["kv-cache-usage"] > 0
    assert expected["prefix-cache-hit-rate"] > 0 and expected["ttft-p90"] is not None
    assert int(page.elements["dashboard"]["attrs"]["data-polls"]) >= 2
    assert page.elements["status"]["text"] == "live" and page.elements["model"]["text"] == MODEL_NAME
    for figure, value in expected.items():
        element = page.elements[figure]
        assert element["text"] == shown(figure, value), figure
        assert (float(element["attrs"]["data-value"]) if element["attrs"]["data-value"] else None) == value, figure
    # the engine is stopped: the generation-token counter did not move between polls
    assert (page.elements["throughput"]["text"], page.elements["throughput"]["attrs"]["data-value"]) == ("0.0", "0")

    assert page.elements["frontier-message"]["text"] == ""
    assert page.elements["frontier-chart"]["attrs"]["data-points"] == "3"
    drawn = sorted((p["data-label"], float(p["data-x"]), float(p["data-y"])) for p in page.points)
    assert drawn == sorted((p["label"], p["interactivity"], p["output_throughput_per_device"]) for p in EXPECTED_POINTS)
    assert page.rows == [
        ["nano", "1", "–", "41.5", "41.5"],
        ["nano", "8", "–", "20.3", "150.8"],  # 20.25 and 150.75 are exact in binary: half up
        ["nano-fp16", "–", "4.5", "12.0", "180.1"],
    ]
