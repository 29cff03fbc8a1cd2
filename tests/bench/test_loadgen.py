"""The client and the load generator against a real local streaming server (tests/bench/conftest.py)."""

from __future__ import annotations

import asyncio
import itertools
import math
import random
import socket
import statistics

import pytest

from tokenworks.bench.client import OpenAIClient, probe
from tokenworks.bench.loadgen import LoadOptions, arrival_times, run_load
from tokenworks.bench.prompts import ModelTokenizer
from tokenworks.bench.records import RequestRecord
from tokenworks.bench.workloads import RequestSpec, WorkloadOptions, build_workload
from tokenworks.errors import BenchError

from .conftest import MODEL, answer_words


def closed_port() -> int:
    """A port nothing listens on: bound, then released."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def send_one(url: str, spec: RequestSpec, timeout: float = 10.0, **client_options) -> tuple[RequestRecord, str | None]:
    async def main():
        async with OpenAIClient(url, MODEL, **client_options) as client:
            client.start_run(timeout)
            record = RequestRecord(index=0, warmup=False, intended_send=None, sent=0.0)
            return record, await client.send(spec, record)

    return asyncio.run(main())


def chat(text: str = "say something now", max_tokens: int | None = 5) -> RequestSpec:
    return RequestSpec(0, "chat", messages=[{"role": "user", "content": text}], max_tokens=max_tokens)


def run(url: str, workload, options: LoadOptions, progress=None, **client_options):
    async def main():
        async with OpenAIClient(url, MODEL, **client_options) as client:
            return await run_load(client, workload, options, progress)

    return asyncio.run(main())


def synthetic(output_tokens: str = "4", **fields):
    return build_workload(WorkloadOptions(input_tokens="8", output_tokens=output_tokens, **fields), seed=0)


# ---- probe ----------------------------------------------------------------------------


def test_probe_finds_the_only_model(fake_server):
    info = asyncio.run(probe(fake_server.url + "/v1/"))
    assert (info.base_url, info.model, info.models, info.max_model_len) == (fake_server.url, MODEL, [MODEL], 2048)
    assert info.server.startswith("Python")  # aiohttp's Server header


def test_probe_errors_are_clear(fake_server):
    port = closed_port()
    with pytest.raises(BenchError) as caught:
        asyncio.run(probe(f"http://127.0.0.1:{port}"))
    assert str(caught.value) == (
        f"cannot reach http://127.0.0.1:{port}/v1/models: connection refused; is the server running?"
    )
    with pytest.raises(BenchError, match=r"does not serve the model 'other'; it serves: test-model"):
        asyncio.run(probe(fake_server.url, model="other"))
    fake_server.behaviour.models = ["a", "b"]
    with pytest.raises(BenchError, match=r"serves 2 models \(a, b\); name the one to measure with --model"):
        asyncio.run(probe(fake_server.url))
    assert asyncio.run(probe(fake_server.url, model="b")).model == "b"
    fake_server.behaviour.models_body = b"<html>hello</html>"
    with pytest.raises(BenchError, match="did not answer with an OpenAI model list"):
        asyncio.run(probe(fake_server.url))
    with pytest.raises(BenchError, match=r"/nothing/v1/models answered HTTP 404 .*OpenAI-compatible"):
        asyncio.run(probe(fake_server.url + "/nothing"))


# ---- one request ------------------------------------------------------------------------


def test_stream_is_recorded_exactly(fake_server):
    fake_server.behaviour.chunk_delay = 0.02
    record, text = send_one(fake_server.url, chat(max_tokens=5))
    assert text == "".join(answer_words(5))
    assert (record.status, record.error, record.http_status) == ("ok", None, 200)
    assert record.chunk_tokens == [1, 1, 1, 1, 1]
    assert (record.output_tokens, record.input_tokens, record.token_source) == (5, 3, "usage")
    assert record.tokenizer_output_tokens is None
    assert len(record.chunk_times) == 5
    assert record.first_token == record.chunk_times[0] and record.last_token == record.chunk_times[-1]
    assert record.first_token - record.sent >= 0.02  # the empty role chunk does not count
    # one time per network read: chunks 20 ms apart get their own (a stall may merge a pair)
    assert record.chunk_times == sorted(record.chunk_times) and len(set(record.chunk_times)) >= 3
    assert record.last_token - record.first_token >= 0.03  # the server slept 4 x 20 ms between them
    body = fake_server.bodies[-1]
    assert body == {
        "model": MODEL,
        "stream": True,
        "messages": [{"role": "user", "content": "say something now"}],
        "max_tokens": 5,
        "ignore_eos": True,
        "min_tokens": 5,
        "stream_options": {"include_usage": True, "continuous_usage_stats": True},
    }


def test_multi_token_chunks_take_their_count_from_cumulative_usage(fake_server):
    fake_server.behaviour.tokens_per_chunk = 3
    fake_server.behaviour.chunks = 4
    fake_server.behaviour.crlf = True
    record, text = send_one(fake_server.url, RequestSpec(0, "completions", prompt="a b c d", max_tokens=12))
    assert text == "".join(answer_words(12))
    assert (record.chunk_tokens, record.output_tokens, record.input_tokens) == ([3, 3, 3, 3], 12, 4)
    assert "messages" not in fake_server.bodies[-1] and fake_server.bodies[-1]["prompt"] == "a b c d"
    assert "temperature" not in fake_server.bodies[-1]  # the server's default unless --temperature


def test_a_temperature_goes_into_every_request(fake_server):
    send_one(fake_server.url, chat(max_tokens=2), temperature=0.0)
    assert fake_server.bodies[-1]["temperature"] == 0.0


def test_without_usage_the_tokenizer_or_the_chunks_count(fake_server, tokenizer):
    fake_server.behaviour.usage = False
    fake_server.behaviour.tokens_per_chunk = 2
    fake_server.behaviour.chunks = 3
    record, text = send_one(fake_server.url, chat(max_tokens=6))
    assert (record.chunk_tokens, record.output_tokens, record.token_source) == ([1, 1, 1], 3, "chunks")
    assert record.input_tokens is None  # the spec had no hint
    counter = ModelTokenizer(tokenizer)
    record, text = send_one(fake_server.url, chat(max_tokens=6), tokenizer=counter)
    pieces = ["".join(answer_words(6)[i : i + 2]) for i in (0, 2, 4)]
    assert record.chunk_tokens == [counter.count(piece) for piece in pieces]
    assert record.output_tokens == record.tokenizer_output_tokens == counter.count(text)
    assert record.token_source == "tokenizer"
    assert record.input_tokens == counter.count_chat([{"role": "user", "content": "say something now"}])


def test_usage_without_continuous_stats_counts_each_chunk_once(fake_server, tokenizer):
    fake_server.behaviour.continuous_usage = False
    record, _ = send_one(fake_server.url, chat(max_tokens=4), tokenizer=ModelTokenizer(tokenizer))
    assert (record.output_tokens, record.token_source) == (4, "usage")
    assert record.tokenizer_output_tokens == ModelTokenizer(tokenizer).count("".join(answer_words(4)))


def test_non_streaming_and_no_length_enforcement(fake_server):
    record, text = send_one(fake_server.url, chat(max_tokens=3), stream=False, enforce_output_length=False)
    assert text == "".join(answer_words(3))
    assert record.first_token == record.last_token == record.chunk_times[0]
    assert (record.chunk_tokens, record.output_tokens, record.token_source) == ([3], 3, "usage")
    body = fake_server.bodies[-1]
    assert body["stream"] is False and "stream_options" not in body and "ignore_eos" not in body


@pytest.mark.parametrize(
    ("knobs", "error", "status"),
    [
        ({"status": 500}, "HTTP 500: the fake server was told to fail", 500),
        ({"status": 429}, "HTTP 429: the fake server was told to fail", 429),
        ({"break_after": 2}, "the connection broke mid-response", 200),
        ({"error_event_after": 1}, "error event mid-stream: the engine failed mid-stream", 200),
        ({"garbage_after": 1}, "a stream chunk is not a JSON object: b'{not json'", 200),
        ({"omit_done": True}, "the stream ended before data: [DONE]", 200),
        ({"hang": True}, "no complete answer within the 0.3 s timeout", None),
        ({"chunk_delay": 0.2}, "no complete answer within the 0.3 s timeout", 200),  # mid-stream
    ],
)
def test_faults_become_error_records(fake_server, knobs, error, status):
    for name, value in knobs.items():
        setattr(fake_server.behaviour, name, value)
    record, text = send_one(fake_server.url, chat(max_tokens=4), timeout=0.3)
    assert text is None
    assert record.status == "error" and not record.ok
    assert record.error.startswith(error), record.error
    assert record.http_status == status
    assert record.output_tokens is None


def test_unreachable_endpoint_is_an_error_record():
    record, text = send_one(f"http://127.0.0.1:{closed_port()}", chat())
    assert text is None and record.error.startswith("cannot connect: ")


# ---- runs ---------------------------------------------------------------------------------


def test_closed_loop_holds_exactly_n_in_flight(fake_server):
    fake_server.behaviour.chunk_delay = 0.003
    progress = []
    options = LoadOptions(concurrency=4, num_requests=20, warmup_requests=3)
    result = run(fake_server.url, synthetic(), options, lambda done, total: progress.append((done, total)))
    assert len(fake_server.bodies) == 23 and len(result.records) == 23
    assert fake_server.max_in_flight == 4
    assert [r.index for r in result.records] == list(range(23))
    assert [r.warmup for r in result.records] == [True] * 3 + [False] * 20
    assert all(r.ok and r.intended_send is None and r.output_tokens == 4 for r in result.records)
    assert max(r.last_token for r in result.records[:3]) <= result.measured_start  # warmup ends first
    assert min(r.sent for r in result.records[3:]) >= result.measured_start
    assert progress == [(done, 23) for done in range(1, 24)]
    assert result.finished >= max(r.last_token for r in result.records)
    assert result.started_at > 1e9 and result.options is options


def test_open_loop_follows_the_schedule(fake_server):
    options = LoadOptions(request_rate=40.0, num_requests=30, seed=7)
    result = run(fake_server.url, synthetic(), options)
    expected = arrival_times(40.0, 30, rng=random.Random(7))
    offsets = [r.intended_send - result.measured_start for r in result.records]
    assert offsets == pytest.approx(expected, abs=1e-6)
    lags = [r.sent - r.intended_send for r in result.records]
    assert min(lags) >= 0 and max(lags) < 0.1
    arrivals = [t - fake_server.arrivals[0] for t in fake_server.arrivals]
    assert arrivals == pytest.approx(expected, abs=0.1)  # the schedule spans 0.53 s


def test_open_loop_cap_waits_for_a_slot_and_shows_the_lag(fake_server):
    fake_server.behaviour.chunk_delay = 0.01
    options = LoadOptions(request_rate=1000.0, concurrency=2, num_requests=10, seed=1)
    result = run(fake_server.url, synthetic(), options)
    assert fake_server.max_in_flight == 2
    lags = [r.sent - r.intended_send for r in result.records]
    assert lags[-1] > 0.1  # ten requests of ~40 ms through two slots, scheduled within ~10 ms
    assert all(r.ok for r in result.records)


def test_duration_bounds_the_run_and_in_flight_requests_finish(fake_server):
    fake_server.behaviour.chunk_delay = 0.02
    result = run(fake_server.url, synthetic(), LoadOptions(concurrency=2, duration=0.3))
    records = result.records
    assert 2 <= len(records) <= 8  # 2 workers, >= 100 ms a request, for 0.3 s
    assert all(r.ok and r.last_token is not None for r in records)
    assert max(r.sent for r in records) < result.measured_start + 0.31
    assert result.finished > result.measured_start + 0.3


def test_faults_in_a_run_are_counted_and_the_run_completes(fake_server):
    fake_server.behaviour.break_after = 1
    result = run(fake_server.url, synthetic(), LoadOptions(concurrency=3, num_requests=9))
    assert len(result.records) == 9
    assert all(r.error.startswith("the connection broke mid-response") for r in result.records)


def test_multi_turn_sessions_send_their_turns_in_order(fake_server):
    fake_server.behaviour.chunk_delay = 0.01
    workload = build_workload(WorkloadOptions(kind="multi-turn", sessions=2, turns=3, output_tokens="2"), seed=0)
    result = run(fake_server.url, workload, LoadOptions(concurrency=2, num_requests=6))
    assert sorted((r.session, r.turn) for r in result.records) == [(s, t) for s in (0, 1) for t in range(3)]
    reply = "".join(answer_words(2))
    for body in fake_server.bodies:
        roles = [m["role"] for m in body["messages"]]
        turn = len(roles) // 2
        assert roles == ["user", "assistant"] * turn + ["user"]
        assert [m["content"] for m in body["messages"] if m["role"] == "assistant"] == [reply] * turn
    assert fake_server.max_in_flight == 2
    for session in (0, 1):  # a session's turn goes only after its previous turn ended
        turns = sorted((r for r in result.records if r.session == session), key=lambda r: r.turn)
        assert all(a.last_token <= b.sent for a, b in itertools.pairwise(turns))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (LoadOptions(concurrency=0, num_requests=1), "--concurrency must be at least 1, got 0"),
        (LoadOptions(request_rate=0.0, num_requests=1), "--request-rate must be above 0"),
        (LoadOptions(concurrency=1), "bound the run: give --num-requests or --duration"),
        (LoadOptions(duration=5.0), "every request is sent at once"),
        (LoadOptions(request_rate=5, burstiness=0.5, num_requests=1), "add --arrival gamma"),
        (LoadOptions(request_rate=5, arrival="uniform", num_requests=1), "unknown arrival process 'uniform'"),
        (LoadOptions(concurrency=1, num_requests=1, timeout=0), "--timeout must be above 0"),
    ],
)
def test_bad_load_options_are_named(options, message):
    with pytest.raises(BenchError, match=message.replace("(", r"\(")):
        options.validate()


# ---- arrival schedules ------------------------------------------------------------------


def gap_statistics(times: list[float]) -> tuple[float, float]:
    gaps = [b - a for a, b in itertools.pairwise(times)]
    mean = statistics.fmean(gaps)
    return mean, statistics.pstdev(gaps) / mean


def test_poisson_arrivals_have_mean_one_over_rate_and_cv_one():
    times = arrival_times(50.0, 100_001, "poisson", rng=random.Random(0))
    assert times[0] == 0.0 and times == sorted(times)
    mean, cv = gap_statistics(times)
    assert mean == pytest.approx(1 / 50.0, rel=0.01)
    assert cv == pytest.approx(1.0, abs=0.02)
    assert times == arrival_times(50.0, 100_001, "poisson", rng=random.Random(0))


@pytest.mark.parametrize("shape", [0.25, 4.0])
def test_gamma_arrivals_have_cv_one_over_sqrt_shape(shape):
    mean, cv = gap_statistics(arrival_times(20.0, 100_001, "gamma", shape, random.Random(1)))
    assert mean == pytest.approx(1 / 20.0, rel=0.02)
    assert cv == pytest.approx(1 / math.sqrt(shape), rel=0.03)


def test_unlimited_rate_sends_everything_at_once():
    assert arrival_times(None, 4) == [0.0] * 4 == arrival_times(math.inf, 4)
