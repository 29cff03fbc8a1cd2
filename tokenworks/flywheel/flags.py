"""The flag rules: pure functions of one logged request, each a `Flag` with its reason or None.

A logged request is a dict of the `requests` table's columns plus its latest feedback's
`rating` and `correction` (store.unflagged_requests). The thresholds are one `FlagConfig`.
The teacher rule needs the teacher's answer, which teacher.py fetches; here it is compared.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass


@dataclass(slots=True)
class FlagConfig:
    min_mean_logprob: float = -2.5  # nats per token: below is an answer the model was unsure of
    repetition_ngram: int = 3  # words per n-gram of the repetition rule
    max_repeated_share: float = 0.5  # share of an answer's n-grams that repeat an earlier one
    ttft_slo_s: float = 1.0
    tpot_slo_s: float = 0.1
    negative_rating_below: float = 0.0  # a rating under this is negative
    min_teacher_overlap: float = 0.5  # word-overlap F1 with the teacher's answer under this: they disagree


@dataclass(slots=True, frozen=True)
class Flag:
    request_id: str
    rule: str
    reason: str
    value: float | None = None

    def as_row(self) -> tuple[str, str, str, float | None]:
        return self.request_id, self.rule, self.reason, self.value


RULES = ("low_logprob", "repetition", "max_tokens", "slo_miss", "negative_rating", "correction", "teacher")


def answer_texts(row: dict) -> list[str]:
    """Each choice's text (completions) or message content (chat) of a logged answer."""
    response = json.loads(row["response_json"]) if row.get("response_json") else {}
    texts = []
    for choice in response.get("choices", []):
        text = choice.get("text") if "text" in choice else (choice.get("message") or {}).get("content")
        texts.append(text or "")
    return texts


def low_logprob(row: dict, config: FlagConfig) -> Flag | None:
    mean = row.get("mean_logprob")
    if mean is None or mean >= config.min_mean_logprob:
        return None
    reason = f"mean output logprob {mean:.3f} is below {config.min_mean_logprob:g}"
    if row.get("min_logprob") is not None:
        reason += f" (lowest {row['min_logprob']:.3f})"
    return Flag(row["request_id"], "low_logprob", reason, mean)


def repeated_share(text: str, n: int) -> float:
    """The share of the text's word n-grams that already occurred earlier in it (0: none repeat)."""
    words = normalized(text).split()
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    if not grams:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


def repetition(row: dict, config: FlagConfig) -> Flag | None:
    shares = [repeated_share(text, config.repetition_ngram) for text in answer_texts(row)]
    worst = max(shares, default=0.0)
    if worst <= config.max_repeated_share:
        return None
    reason = f"{worst:.0%} of the answer's {config.repetition_ngram}-word n-grams repeat (over {config.max_repeated_share:.0%})"
    return Flag(row["request_id"], "repetition", reason, worst)


def max_tokens(row: dict, config: FlagConfig) -> Flag | None:
    reasons = json.loads(row["finish_reasons"]) if row.get("finish_reasons") else []
    cut = sum(reason == "length" for reason in reasons)
    if not cut:
        return None
    limit = _request(row).get("max_completion_tokens") or _request(row).get("max_tokens")
    reason = f"{cut} of {len(reasons)} choices stopped at the token limit ({limit}) before their end"
    return Flag(row["request_id"], "max_tokens", reason, float(cut))


def slo_miss(row: dict, config: FlagConfig) -> Flag | None:
    misses = []
    ttft, tpot = row.get("ttft_s"), row.get("tpot_s")
    if ttft is not None and ttft > config.ttft_slo_s:
        misses.append(f"TTFT {ttft * 1000:.0f} ms over {config.ttft_slo_s * 1000:g} ms")
    if tpot is not None and tpot > config.tpot_slo_s:
        misses.append(f"TPOT {tpot * 1000:.1f} ms over {config.tpot_slo_s * 1000:g} ms")
    if not misses:
        return None
    return Flag(
        row["request_id"],
        "slo_miss",
        "; ".join(misses),
        ttft if ttft is not None and ttft > config.ttft_slo_s else tpot,
    )


def negative_rating(row: dict, config: FlagConfig) -> Flag | None:
    rating = row.get("rating")
    if rating is None or rating >= config.negative_rating_below:
        return None
    return Flag(
        row["request_id"], "negative_rating", f"rated {rating:g} (below {config.negative_rating_below:g})", rating
    )


def correction(row: dict, config: FlagConfig) -> Flag | None:
    text = row.get("correction")
    if text is None:
        return None
    preview = text if len(text) <= 60 else text[:57] + "..."
    return Flag(row["request_id"], "correction", f"corrected to {preview!r}", None)


def teacher_disagreement(row: dict, teacher_text: str, config: FlagConfig) -> Flag | None:
    """The served answer (the first choice) against the teacher's greedy answer to the same prompt."""
    texts = answer_texts(row)
    if not texts:
        return None
    overlap = word_f1(texts[0], teacher_text)
    if overlap >= config.min_teacher_overlap:
        return None
    preview = teacher_text if len(teacher_text) <= 60 else teacher_text[:57] + "..."
    reason = f"word overlap {overlap:.2f} with the teacher's answer {preview!r} (under {config.min_teacher_overlap:g})"
    return Flag(row["request_id"], "teacher", reason, overlap)


# The rules that need nothing but the row, in RULES' order (the teacher's comes after them).
ROW_RULES = (low_logprob, repetition, max_tokens, slo_miss, negative_rating, correction)


def flags_of(row: dict, config: FlagConfig) -> list[Flag]:
    """Every row rule's flag for this request (the teacher's aside)."""
    if row.get("status") != "ok":
        return []  # a failed request has no answer to judge
    return [flag for rule in ROW_RULES if (flag := rule(row, config)) is not None]


def normalized(text: str) -> str:
    """Lower case, punctuation gone, whitespace collapsed: answers compared as words."""
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def word_f1(answer: str, reference: str) -> float:
    """SQuAD's token F1 of two texts' normalized words: 1.0 for equal texts (both empty included)."""
    a, b = normalized(answer).split(), normalized(reference).split()
    if not a or not b:
        return float(a == b)
    common = sum((Counter(a) & Counter(b)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(a), common / len(b)
    return 2 * precision * recall / (precision + recall)


def _request(row: dict) -> dict:
    return json.loads(row["request_json"]) if row.get("request_json") else {}
