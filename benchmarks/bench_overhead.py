"""How fast and how exact is the load generator? `tokenworks bench` against a server that costs nothing.

Not a test and not run in CI. A minimal OpenAI-compatible server (raw asyncio, pre-built
server-sent events, 64 one-token chunks per answer, HTTP/1.1 keep-alive, chunked encoding)
runs in its own process pinned to one core; the load generator (`run_load` and
`OpenAIClient`, exactly as `tokenworks bench` uses them) runs pinned to another. It prints:

- closed loop at rising concurrency: the request rate the generator sustains (goal: >= 1,000/s),
  and the same per CPU-second the generator used (what it sustains with its core to itself,
  whatever else runs on the machine);
- open loop at rising rates: the rate achieved and the schedule lag;
- the TTFT error the generator adds. The server writes its receive and send times
  (`time.perf_counter`, CLOCK_MONOTONIC, one clock for every process) into the first chunk,
  so the server's own TTFT is known; the error is the client's TTFT minus it, split into the
  request's way in (client send to server receive) and the answer's way out.

    .venv/bin/python benchmarks/bench_overhead.py [--seconds 2] [--concurrency 1 8 32 128] [--rates 500 1000 1500]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import contextlib

import aiohttp

from tokenworks.bench.client import OpenAIClient
from tokenworks.bench.loadgen import LoadOptions, LoadResult, run_load
from tokenworks.bench.records import RequestRecord
from tokenworks.bench.workloads import WorkloadOptions, build_workload

MODEL = "overhead"
TOKENS = 64
STAMP = "@{:017.6f}/{:017.6f}@"  # receive and send times; fixed width, so the body length is fixed


def _http_chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _event(payload: dict) -> bytes:
    return _http_chunk(b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n")


def _answer_parts() -> tuple[bytes, bytes]:
    """The answer before the first content chunk, and everything after it, pre-built."""
    base = {"id": "chatcmpl-overhead", "object": "chat.completion.chunk", "created": 0, "model": MODEL}

    def chunk(content: str | None, completed: int) -> bytes:
        choices = [{"index": 0, "delta": {"content": content}, "finish_reason": None}] if content is not None else []
        usage = {"prompt_tokens": 16, "completion_tokens": completed, "total_tokens": 16 + completed}
        return _event({**base, "choices": choices, "usage": usage})

    head = (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
        + chunk("", 0)  # the role chunk, as vLLM sends it
    )
    rest = b"".join(chunk(f" t{i}", i + 1) for i in range(1, TOKENS)) + chunk(None, TOKENS)
    return head, rest + _http_chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n"


def _first_chunk_template() -> bytes:
    stamp = STAMP.format(0.0, 0.0)
    usage = {"prompt_tokens": 16, "completion_tokens": 1, "total_tokens": 17}
    return _event({"choices": [{"index": 0, "delta": {"content": stamp}}], "usage": usage})


def _content_length(head: bytes) -> int:
    at = head.find(b"content-length:")
    if at < 0:
        return 0
    line_end = head.find(b"\r\n", at)
    return int(head[at + 15 : line_end if line_end >= 0 else len(head)])


class InstantServer(asyncio.Protocol):
    head, rest = _answer_parts()
    first = _first_chunk_template()
    zero = STAMP.format(0.0, 0.0).encode()
    models = json.dumps({"object": "list", "data": [{"id": MODEL, "object": "model"}]}).encode()

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport, self.buffer = transport, b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            head = self.buffer[:end].lower()
            length = _content_length(head)
            if len(self.buffer) < end + 4 + length:
                return
            received = time.perf_counter()
            self.buffer = self.buffer[end + 4 + length :]
            if head.startswith(b"get"):
                head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                self.transport.write(head % len(self.models) + self.models)
                continue
            stamp = STAMP.format(received, time.perf_counter()).encode()
            self.transport.write(self.head + self.first.replace(self.zero, stamp) + self.rest)


def serve(port_queue: multiprocessing.Queue, core: int) -> None:
    os.sched_setaffinity(0, {core})

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(InstantServer, "127.0.0.1", 0, backlog=4096)
        port_queue.put(server.sockets[0].getsockname()[1])
        await server.serve_forever()

    asyncio.run(main())


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def ttft_error(result: LoadResult, text_by_index: dict[int, str]) -> tuple[list[float], list[float], list[float]]:
    """Per request: added TTFT error, the request's way in, the answer's way out (seconds)."""
    added, way_in, way_out = [], [], []
    for record in result.records:
        text = text_by_index.get(record.index)
        if not record.ok or record.warmup or not text:
            continue
        received, sent = (float(x) for x in text[1 : text.index("@", 1)].split("/"))
        client_ttft = record.first_token - record.sent
        added.append(client_ttft - (sent - received))
        way_in.append(received - (result.origin + record.sent))
        way_out.append(result.origin + record.first_token - sent)
    return added, way_in, way_out


class TextKeepingClient(OpenAIClient):
    """Keeps each reply's text (the server's stamps) by record index; the benchmark only."""

    texts: dict[int, str]

    async def send(self, spec, record):
        text = await super().send(spec, record)
        if text is not None:
            self.texts[record.index] = text
        return text


@dataclass(slots=True)
class Point:
    result: LoadResult
    texts: dict[int, str]  # reply text by record index
    cpu_seconds: float  # the load generator's CPU time (user + system) during the run

    @property
    def measured(self) -> list[RequestRecord]:
        return [r for r in self.result.records if not r.warmup]

    @property
    def rate(self) -> float:
        """Completed requests per second of the window: first measured send to last completion."""
        measured = self.measured
        return len(measured) / (max(r.last_token or r.sent for r in measured) - min(r.sent for r in measured))

    @property
    def rate_per_cpu_second(self) -> float:
        """The rate the generator would sustain with its core to itself: requests per CPU-second it used."""
        return len(self.result.records) / self.cpu_seconds

    @property
    def errors(self) -> int:
        return sum(not r.ok for r in self.measured)


def measure(url: str, options: LoadOptions, workload) -> Point:
    async def run() -> Point:
        async with TextKeepingClient(url, MODEL) as client:
            client.texts = {}
            cpu = time.process_time()
            result = await run_load(client, workload, options)
            return Point(result, client.texts, time.process_time() - cpu)

    return asyncio.run(run())


def machine() -> str:
    model = "unknown CPU"
    with contextlib.suppress(OSError, StopIteration):
        model = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        )
    return (
        f"{model}, {os.cpu_count()} logical cores; Python {platform.python_version()}, aiohttp {aiohttp.__version__}, "
        f"{platform.system()} {platform.release()}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="measured time per point (about)")
    parser.add_argument("--concurrency", type=int, nargs="*", default=[1, 8, 32, 128])
    parser.add_argument("--rates", type=float, nargs="*", default=[500.0, 1000.0, 1500.0])
    args = parser.parse_args()

    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        sys.exit("bench_overhead needs two cores: one for the server, one for the load generator")
    client_core, server_core = cores[0], cores[1]
    print(f"machine: {machine()}")
    print(f"load generator pinned to core {client_core}, server to core {server_core}; {TOKENS} tokens per stream")
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"load average before the run: {load} (other work on these cores lowers requests/s, not per CPU-s)")

    ports: multiprocessing.Queue = multiprocessing.get_context("spawn").Queue()
    server = multiprocessing.get_context("spawn").Process(target=serve, args=(ports, server_core), daemon=True)
    server.start()
    url = f"http://127.0.0.1:{ports.get(timeout=30)}"
    os.sched_setaffinity(0, {client_core})
    workload = build_workload(WorkloadOptions(input_tokens="16", output_tokens=str(TOKENS)), seed=0)
    try:
        print("\nclosed loop        requests/s  per generator CPU-s  requests  errors  TTFT added p50 / p99 (ms)")
        best = best_cpu = 0.0
        for concurrency in args.concurrency:
            count = max(200, int(args.seconds * 1500))
            options = LoadOptions(concurrency=concurrency, num_requests=count, warmup_requests=min(100, count))
            point = measure(url, options, workload)
            added, _, _ = ttft_error(point.result, point.texts)
            best, best_cpu = max(best, point.rate), max(best_cpu, point.rate_per_cpu_second)
            print(
                f"  concurrency {concurrency:<4d} {point.rate:10.0f}  {point.rate_per_cpu_second:19.0f}  "
                f"{len(point.measured):8d}  {point.errors:6d}  "
                f"{percentile(added, 50) * 1e3:7.3f} / {percentile(added, 99) * 1e3:7.3f}"
            )
        print("\nopen loop (Poisson) achieved/s  per generator CPU-s  requests  errors  lag p50 / p99 (ms)")
        for rate in args.rates:
            options = LoadOptions(request_rate=rate, num_requests=max(200, int(args.seconds * rate)), seed=0)
            point = measure(url, options, workload)
            lags = [r.sent - r.intended_send for r in point.result.records]
            print(
                f"  rate {rate:<11.0f} {point.rate:10.0f}  {point.rate_per_cpu_second:19.0f}  "
                f"{len(point.measured):8d}  {point.errors:6d}  "
                f"{percentile(lags, 50) * 1e3:7.3f} / {percentile(lags, 99) * 1e3:7.3f}"
            )
        point = measure(url, LoadOptions(concurrency=1, num_requests=500, warmup_requests=50), workload)
        added, way_in, way_out = ttft_error(point.result, point.texts)
        print("\nTTFT error at concurrency 1 (server's own TTFT subtracted), ms:")
        for name, values in (("added", added), ("request way in", way_in), ("answer way out", way_out)):
            print(
                f"  {name:<15s} mean {statistics.fmean(values) * 1e3:7.3f}  p50 {percentile(values, 50) * 1e3:7.3f}  "
                f"p99 {percentile(values, 99) * 1e3:7.3f}"
            )
        verdict = "meets" if best >= 1000 else "misses"
        print(
            f"\nhighest sustained rate: {best:.0f} requests/s with {TOKENS}-token streams ({verdict} the 1,000/s goal); "
            f"{best_cpu:.0f} requests per CPU-second of the load generator"
        )
    finally:
        server.terminate()
        server.join(5)


if __name__ == "__main__":
    main()
