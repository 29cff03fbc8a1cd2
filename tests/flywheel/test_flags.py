"""Each flag rule on crafted rows, exactly; the teacher rule against a real second tokenworks
server; and `tokenworks flywheel flag` over a log, looking again only at rows with new feedback."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import httpx
import pytest

from tokenworks.flywheel import store
from tokenworks.flywheel.entries import LoggedRequest
from tokenworks.flywheel.flagging import flag_requests
from tokenworks.flywheel.flags import (
    Flag,
    FlagConfig,
    correction,
    flags_of,
    low_logprob,
    max_tokens,
    negative_rating,
    repeated_share,
    repetition,
    slo_miss,
    teacher_disagreement,
    word_f1,
)
from tokenworks.flywheel.teacher import Teacher, TeacherError
from tokenworks.flywheel.writer import LogWriter

from ..serve.conftest import MODEL_NAME, serve_model_dir, start_server  # noqa: F401 (a fixture)

CONFIG = FlagConfig()


def row(request_id: str = "cmpl-1", text: str = "a fine answer", **columns) -> dict:
    """A logged completion as store.unflagged_requests gives it: columns, then its latest feedback."""
    base = {
        "request_id": request_id, "status": "ok", "endpoint": "completions", "mean_logprob": -1.0,
        "min_logprob": -2.0, "ttft_s": 0.1, "tpot_s": 0.01, "finish_reasons": '["stop"]',
        "request_json": json.dumps({"prompt": "A list is", "max_tokens": 8}),
        "response_json": json.dumps({"choices": [{"index": 0, "text": text, "finish_reason": "stop"}]}),
        "rating": None, "correction": None,
    }  # fmt: skip
    return {**base, **columns}


def test_a_plain_good_answer_has_no_flags() -> None:
    assert flags_of(row(), CONFIG) == []


def test_low_mean_logprob() -> None:
    assert low_logprob(row(mean_logprob=-2.5), CONFIG) is None  # at the threshold: not below it
    assert low_logprob(row(mean_logprob=-3.25, min_logprob=-7.5), CONFIG) == Flag(
        "cmpl-1", "low_logprob", "mean output logprob -3.250 is below -2.5 (lowest -7.500)", -3.25
    )
    assert low_logprob(row(mean_logprob=None), CONFIG) is None  # logged without scores


def test_repetition() -> None:
    assert repeated_share("a b c a b c a b c", 3) == pytest.approx(1 - 3 / 7)
    assert repeated_share("one two", 3) == 0.0
    looping = "the list the list the list the list"  # 3-grams: 6, of which 2 distinct
    assert repetition(row(text=looping), CONFIG) == Flag(
        "cmpl-1", "repetition", "67% of the answer's 3-word n-grams repeat (over 50%)", pytest.approx(2 / 3)
    )
    assert repetition(row(text="a list holds items in order"), CONFIG) is None


def test_stopped_by_max_tokens() -> None:
    assert max_tokens(row(finish_reasons='["stop", "length"]'), CONFIG) == Flag(
        "cmpl-1", "max_tokens", "1 of 2 choices stopped at the token limit (8) before their end", 1.0
    )
    assert max_tokens(row(), CONFIG) is None


def test_slo_miss() -> None:
    assert slo_miss(row(ttft_s=1.5, tpot_s=0.25), CONFIG) == Flag(
        "cmpl-1", "slo_miss", "TTFT 1500 ms over 1000 ms; TPOT 250.0 ms over 100 ms", 1.5
    )
    assert slo_miss(row(tpot_s=0.25), CONFIG) == Flag("cmpl-1", "slo_miss", "TPOT 250.0 ms over 100 ms", 0.25)
    assert slo_miss(row(ttft_s=1.0, tpot_s=0.1), CONFIG) is None  # at the SLOs: met


def test_negative_rating_and_correction() -> None:
    assert negative_rating(row(rating=-1.0), CONFIG) == Flag("cmpl-1", "negative_rating", "rated -1 (below 0)", -1.0)
    assert negative_rating(row(rating=0.0), CONFIG) is None
    assert negative_rating(row(rating=2.0), FlagConfig(negative_rating_below=3)) == Flag(
        "cmpl-1", "negative_rating", "rated 2 (below 3)", 2.0
    )
    assert correction(row(correction="A list is mutable."), CONFIG) == Flag(
        "cmpl-1", "correction", "corrected to 'A list is mutable.'", None
    )
    assert correction(row(), CONFIG) is None


def test_every_rule_at_once_and_none_for_a_failed_request() -> None:
    bad = row(text="x y z x y z x y z", mean_logprob=-4.0, finish_reasons='["length"]', ttft_s=2.0, rating=-1.0,
              correction="better")  # fmt: skip
    assert [flag.rule for flag in flags_of(bad, CONFIG)] == [
        "low_logprob", "repetition", "max_tokens", "slo_miss", "negative_rating", "correction",
    ]  # fmt: skip
    assert flags_of({**bad, "status": "error"}, CONFIG) == []


def test_word_overlap() -> None:
    assert word_f1("A list, is mutable!", "a LIST is mutable") == 1.0
    assert word_f1("a b c d", "a b x y") == 0.5
    assert word_f1("", "") == 1.0
    assert word_f1("a", "") == 0.0


# ---- the teacher: a real tokenworks server, asked over HTTP -------------------------------


@pytest.fixture(scope="module")
def teacher_server(serve_model_dir):  # noqa: F811
    """A second server of the same model, without a request log."""
    server = start_server(serve_model_dir)
    yield server
    server.stop()


def test_the_teacher_agrees_with_its_own_greedy_answer_and_flags_another(teacher_server) -> None:
    teacher = Teacher(teacher_server.url)  # the base URL without /v1 works too
    assert teacher.model == MODEL_NAME
    request = {"prompt": "A list is", "max_tokens": 8}
    own = httpx.post(f"{teacher_server.url}/v1/completions", json={**request, "temperature": 0}).json()
    own_text = own["choices"][0]["text"]
    assert teacher.answer("completions", request) == own_text
    assert teacher_disagreement(row(text=own_text), own_text, CONFIG) is None
    flag = teacher_disagreement(row(text="zebra quantum"), own_text, CONFIG)
    assert (flag.rule, flag.value) == ("teacher", 0.0)
    assert flag.reason.startswith("word overlap 0.00 with the teacher's answer")


def test_the_teacher_answers_chat_and_skips_token_id_prompts(teacher_server) -> None:
    teacher = Teacher(teacher_server.url + "/v1/", model=MODEL_NAME)
    messages = [{"role": "user", "content": "What is a dict?"}]
    own = httpx.post(
        f"{teacher_server.url}/v1/chat/completions",
        json={"messages": messages, "max_tokens": 5, "temperature": 0},
    ).json()
    assert (
        teacher.answer("chat.completions", {"messages": messages, "max_completion_tokens": 5})
        == (own["choices"][0]["message"]["content"])
    )
    assert teacher.answer("completions", {"prompt": [1, 2, 3]}) is None


def test_an_unreachable_or_wrong_teacher_is_one_clear_error(teacher_server) -> None:
    with pytest.raises(TeacherError, match="cannot be reached"):
        Teacher("http://127.0.0.1:9", model="m", timeout_s=2).answer("completions", {"prompt": "x"})
    with pytest.raises(TeacherError, match="answered 404"):
        Teacher(teacher_server.url, model="not-served").answer("completions", {"prompt": "x"})


def test_a_server_without_a_log_refuses_feedback_saying_why(teacher_server) -> None:
    response = httpx.post(f"{teacher_server.url}/v1/feedback", json={"request_id": "cmpl-1", "rating": 1})
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "request_log_off"
    assert "--log-db" in response.json()["error"]["message"]


# ---- flagging a log -------------------------------------------------------------------------


def entry(request_id: str, text: str, **fields) -> LoggedRequest:
    response = {"id": request_id, "choices": [{"index": 0, "text": text, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 4, "prompt_tokens_details": {"cached_tokens": 0}}}  # fmt: skip
    values = dict(created=time.time(), endpoint="completions", request={"prompt": "A list is", "max_tokens": 8},
                  response=response, mean_logprob=-1.0, min_logprob=-1.5, ttft_s=0.1, tpot_s=0.01)  # fmt: skip
    return LoggedRequest(request_id=request_id, **{**values, **fields})


def test_flag_writes_each_rule_once_and_looks_again_after_feedback(tmp_path, teacher_server) -> None:
    db = tmp_path / "requests.db"
    writer = LogWriter(db)
    writer.put(entry("cmpl-good", "a fine answer"))
    writer.put(entry("cmpl-unsure", "a fine answer", mean_logprob=-3.0))
    writer.put(entry("cmpl-slow", "a fine answer", ttft_s=3.0))
    writer.flush().result(10)
    assert flag_requests(db, CONFIG) == (3, {"low_logprob": 1, "slo_miss": 1})
    assert flag_requests(db, CONFIG) == (0, {})  # nothing new
    assert writer.feedback("cmpl-good", -2, "the right answer").result(10)["request_id"] == "cmpl-good"
    assert flag_requests(db, CONFIG) == (1, {"negative_rating": 1, "correction": 1})
    writer.close()
    with store.connect_existing(db) as connection:
        flags = connection.execute("SELECT request_id, rule, reason, value FROM flags ORDER BY request_id, rule")
        assert [tuple(flag) for flag in flags] == [
            ("cmpl-good", "correction", "corrected to 'the right answer'", None),
            ("cmpl-good", "negative_rating", "rated -2 (below 0)", -2.0),
            ("cmpl-slow", "slo_miss", "TTFT 3000 ms over 1000 ms", 3.0),
            ("cmpl-unsure", "low_logprob", "mean output logprob -3.000 is below -2.5 (lowest -1.500)", -3.0),
        ]
    # The command looks only at rows it has not seen: none are left, so the teacher is asked nothing.
    result = subprocess.run(
        [sys.executable, "-m", "tokenworks", "flywheel", "flag", "--db", str(db), "--teacher", teacher_server.url,
         "--ttft-slo", "0.05"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "flags of 0 requests" in result.stdout
    assert [line.split("│")[1:3] for line in result.stdout.splitlines() if "│ teacher" in line] == [
        [" teacher         ", "       0 "]
    ]


def test_flag_with_a_teacher_flags_disagreement(tmp_path, teacher_server) -> None:
    db = tmp_path / "requests.db"
    own = httpx.post(f"{teacher_server.url}/v1/completions",
                     json={"prompt": "A list is", "max_tokens": 8, "temperature": 0}).json()["choices"][0]["text"]  # fmt: skip
    writer = LogWriter(db)
    writer.put(entry("cmpl-agrees", own))
    writer.put(entry("cmpl-differs", "zebra quantum"))
    writer.close()
    looked_at, counts = flag_requests(db, CONFIG, Teacher(teacher_server.url))
    assert (looked_at, counts) == (2, {"teacher": 1})
    with store.connect_existing(db) as connection:
        assert [tuple(flag) for flag in connection.execute("SELECT request_id, value FROM flags")] == [
            ("cmpl-differs", 0.0)
        ]


def test_flag_on_a_missing_log_is_one_line(tmp_path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tokenworks", "flywheel", "flag", "--db", str(tmp_path / "none.db")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 1
    assert "no request log at" in result.stderr and "Traceback" not in result.stderr
