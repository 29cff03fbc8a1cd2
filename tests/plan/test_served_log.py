"""`plan simulate --replay` of a server's request log: what was served, sent again with its prompts.

The log is a real SQLite file written by the request log's own code (entries.py's rows, store.py's
statements), as `tokenworks serve --log-db` writes it.
"""

from __future__ import annotations

import json
import sqlite3
import sys

import pytest

from tests.plan.conftest import LinearLatency, write_profile
from tokenworks.bench.loadgen import LoadOptions
from tokenworks.cli import main
from tokenworks.errors import PlanError
from tokenworks.flywheel.entries import LoggedRequest, to_row
from tokenworks.flywheel.store import connect, insert_requests
from tokenworks.model.config import ModelConfig
from tokenworks.plan.served_log import is_served_log
from tokenworks.plan.simulate import Fleet, replica_config, simulate_replay

SYSTEM = "You answer questions about the Python standard library, briefly and exactly. " * 3
START = 1_765_000_000.0  # Unix time of the first logged arrival


def _answer(completion_tokens: int, n: int = 1) -> dict:
    choices = [{"index": i, "finish_reason": "length"} for i in range(n)]
    return {"choices": choices, "usage": {"prompt_tokens": 1, "completion_tokens": completion_tokens}}


def _chat(request_id: str, at: float, question: str, tokens: int) -> LoggedRequest:
    body = {"model": "m", "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}],
            "max_tokens": tokens}  # fmt: skip
    return LoggedRequest(request_id, START + at, "chat.completions", body, _answer(tokens))


def write_log(path) -> None:
    entries = [
        _chat("chat-1", 0.0, "What does itertools.pairwise return?", 5),
        _chat("chat-2", 0.25, "How do I sort a dict by value?", 7),
        LoggedRequest("text", START + 0.5, "completions", {"model": "m", "prompt": "import os", "max_tokens": 4},
                      _answer(4)),
        LoggedRequest("ids", START + 0.75, "completions", {"model": "m", "prompt": [[5, 6, 7, 8, 9]]}, _answer(3)),
        _chat("chat-3", 1.0, "What is a frozenset?", 6),
        LoggedRequest("refused", START + 1.1, "completions", {"model": "m", "prompt": "x"}, None, status="error",
                      http_status=400, error="max_tokens too large"),
        LoggedRequest("two-choices", START + 1.2, "completions", {"model": "m", "prompt": "a", "n": 2}, _answer(8, 2)),
        LoggedRequest("two-prompts", START + 1.3, "completions", {"model": "m", "prompt": ["a", "b"]}, _answer(8)),
    ]  # fmt: skip
    connection = connect(path)
    with connection:
        insert_requests(connection, [to_row(entry, redact=False) for entry in entries])
    connection.close()


@pytest.fixture
def log(tmp_path):
    path = tmp_path / "requests.db"
    write_log(path)
    return path


def test_the_served_requests_are_sent_again_with_their_prompts(log, nano_model_dir, sim_prompts) -> None:
    """Each answered request at its logged time (from the first), with the ids the server computed
    (the chat template rendered, the text encoded, the ids as sent) and the tokens it made; the
    chat requests' shared system prompt is found cached after the first one computed it."""
    assert is_served_log(log) and not is_served_log(log.with_suffix(".jsonl"))
    tokenizer = sim_prompts.tokenizer
    config = ModelConfig.load(nano_model_dir)
    fleet = Fleet(replica_config(config, block_size=16, num_kv_blocks=512), LinearLatency(0.002, 1e-4))
    run = simulate_replay(fleet, sim_prompts, log, None, LoadOptions(warmup_requests=0))

    def chat_ids(question: str) -> list[int]:
        messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]
        return tokenizer.encode(tokenizer.apply_chat_template(messages, True))

    first, second, third = (chat_ids(q) for q in ("What does itertools.pairwise return?",
                                                   "How do I sort a dict by value?", "What is a frozenset?"))  # fmt: skip
    expected_inputs = [len(first), len(second), len(tokenizer.encode("import os")), 5, len(third)]  # 5: the ids
    records = run.records
    assert [record.sent for record in records] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert [record.input_tokens for record in records] == expected_inputs
    assert [record.output_tokens for record in records] == [5, 7, 4, 3, 6]
    assert [record.status for record in records] == ["ok"] * 5

    def shared_blocks(a: list[int], b: list[int]) -> int:
        common = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
        return common // 16 * 16

    assert shared_blocks(first, second) >= 16  # the system prompt fills whole blocks
    third_cached = max(shared_blocks(first, third), shared_blocks(second, third))  # the longest cached run
    assert [record.cached_tokens for record in records] == [0, shared_blocks(first, second), 0, 0, third_cached]
    assert run.left_out == {"failed": 1, "with several choices": 1, "with several prompts": 1}


def test_plan_simulate_replays_a_log_and_says_what_it_left_out(log, nano_model_dir, tmp_path, monkeypatch,
                                                                capsys) -> None:  # fmt: skip
    profile = tmp_path / "profile.json"
    write_profile(nano_model_dir, profile)
    out = tmp_path / "replayed"
    args = ["tokenworks", "plan", "simulate", str(nano_model_dir), "--profile", str(profile), "--replay", str(log),
            "--warmup-requests", "0", "--out", str(out)]  # fmt: skip
    monkeypatch.setattr(sys, "argv", args)
    try:
        main()
    except SystemExit as exited:
        assert exited.code in (0, None), capsys.readouterr().err
    printed = " ".join(capsys.readouterr().out.split())  # (rich wraps its lines at the console's width)
    assert "left out of the replay: 1 failed, 1 with several choices, 1 with several prompts" in printed
    run = json.loads((out / "run.json").read_text())
    assert run["simulation"]["replay_left_out"] == {"failed": 1, "with several choices": 1, "with several prompts": 1}
    assert [point["label"] for point in run["points"]] == ["replay of requests.db"]
    assert len((out / "requests.jsonl").read_text().splitlines()) == 5

    monkeypatch.setattr(sys, "argv", [*args, "--replay-point", "c=1"])
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 1
    assert "a server's request log has none" in capsys.readouterr().err


def test_a_log_with_nothing_to_replay_is_one_clear_line(nano_model_dir, tmp_path, monkeypatch, capsys) -> None:
    path = tmp_path / "failures.db"
    connection = connect(path)
    with connection:
        insert_requests(connection, [to_row(LoggedRequest("r", START, "completions", {"prompt": "x"}, None,
                                                          status="error", http_status=503), redact=False)])  # fmt: skip
    connection.close()
    profile = tmp_path / "profile.json"
    write_profile(nano_model_dir, profile)
    monkeypatch.setattr(sys, "argv", ["tokenworks", "plan", "simulate", str(nano_model_dir), "--profile", str(profile),
                                      "--replay", str(path), "--out", str(tmp_path / "out")])  # fmt: skip
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 1
    error = capsys.readouterr().err
    assert error.startswith("error: nothing in the request log") and "(1 failed)" in error


def test_an_sqlite_file_that_is_no_request_log_is_refused_and_left_as_it_was(nano_model_dir, sim_prompts,
                                                                              tmp_path) -> None:  # fmt: skip
    other = tmp_path / "notes.db"
    connection = sqlite3.connect(other)
    with connection:
        connection.execute("CREATE TABLE notes (text TEXT)")
    connection.close()
    before = other.read_bytes()
    config = ModelConfig.load(nano_model_dir)
    fleet = Fleet(replica_config(config, block_size=16, num_kv_blocks=64), LinearLatency(0.002, 1e-4))
    refused = r"notes.db is not a request log of `tokenworks serve --log-db` \(no such table"
    with pytest.raises(PlanError, match=refused):
        simulate_replay(fleet, sim_prompts, other, None, LoadOptions())
    assert other.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["notes.db"]
