"""An iteration's report: report.json (every figure) and report.md (the before/after and the log).

Written from the figures dict alone, so a report can be rebuilt, and the factory's report can
show the same table from report.json.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

JSON_NAME, MARKDOWN_NAME = "report.json", "report.md"


def before_after_rows(figures: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(figure, champion, candidate, relative change) for the evaluated figures; none before evaluation."""
    if "candidate" not in figures:
        return []
    before, after, relative = figures["champion"], figures["candidate"], figures["relative"]
    rows = [
        ("hard-eval loss", f"{before['hard_eval_loss']:.4f}", f"{after['hard_eval_loss']:.4f}",
         f"{relative['hard_eval_loss']:+.2%}"),
        ("general loss", f"{before['general_loss']:.4f}", f"{after['general_loss']:.4f}",
         f"{relative['general_loss']:+.2%}"),
    ]  # fmt: skip
    if before.get("exact_match") is not None and after.get("exact_match") is not None:
        rows.append(("hard-eval exact match", f"{before['exact_match']:.1%}", f"{after['exact_match']:.1%}", ""))
    return rows


def headline(figures: dict[str, Any]) -> str:
    outcome = figures["outcome"]
    if outcome == "promoted":
        return f"iteration {figures['iteration']}: version {figures['candidate_version']} promoted to champion"
    if outcome == "refused":
        failed = ", ".join(figures["decision"]["failed"])
        return f"iteration {figures['iteration']}: version {figures['candidate_version']} refused ({failed})"
    return f"iteration {figures['iteration']}: no labelled flagged request, nothing trained"


def write_report(directory: Path, figures: dict[str, Any]) -> tuple[Path, Path]:
    directory = Path(directory)
    json_path, markdown_path = directory / JSON_NAME, directory / MARKDOWN_NAME
    json_path.write_text(json.dumps(figures, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")
    markdown_path.write_text(markdown(figures), encoding="utf-8")
    return json_path, markdown_path


def markdown(figures: dict[str, Any]) -> str:
    lines = [f"# Flywheel {headline(figures)}", ""]
    labels = figures.get("labels", {})
    lines.append(
        f"{figures['collected']} requests collected, {figures['flagged']} flagged "
        f"({', '.join(f'{rule} {n}' for rule, n in figures.get('flag_rules', {}).items()) or 'none'}); labels: "
        + (", ".join(f"{k} {v}" for k, v in labels.items() if k != "shuffled" and v) or "none")
        + (" (shuffled: a deliberately bad candidate)" if labels.get("shuffled") else "")
        + "."
    )
    if dataset := figures.get("dataset"):
        lines.append(f"Dataset: {dataset['train']} train, {dataset['validation']} validation, "
                     f"{dataset['hard_eval']} hard-eval items (manifest {dataset['manifest']}).")  # fmt: skip
    if training := figures.get("training"):
        lines.append(f"Candidate: version {figures['candidate_version']} from version {figures['champion_version']}, "
                     f"{training['steps']} LoRA steps in {training['seconds']:.0f} s.")  # fmt: skip
    if rows := before_after_rows(figures):
        lines += ["", "| figure | champion | candidate | change |", "|---|---:|---:|---:|"]
        lines += [f"| {' | '.join(row)} |" for row in rows]
    if decision := figures.get("decision"):
        gate = figures["config"]
        lines += ["", f"Gate (margin {gate['margin']:.0%}, tolerance +{gate['tolerance']:.0%}):"]
        lines += [f"- {reason}" for reason in decision["reasons"]]
    if log := figures.get("log"):
        lines += ["", "Promotion log:", "", "| # | time (UTC) | action | alias | from | to | reason |",
                  "|---:|---|---|---|---:|---:|---|"]  # fmt: skip
        for entry in log:
            when = datetime.fromtimestamp(entry["time"], UTC).strftime("%H:%M:%S")
            cells = [str(entry["id"]), when, entry["action"], entry["alias"] or "", _cell(entry["from_version"]),
                     _cell(entry["to_version"]), entry["reason"].replace("|", "/")]  # fmt: skip
            lines.append(f"| {' | '.join(cells)} |")
    seconds = figures.get("seconds", {})
    lines += ["", "Seconds per stage: " + ", ".join(f"{stage} {s:.1f}" for stage, s in seconds.items()), ""]
    return "\n".join(lines)


def _cell(value: int | None) -> str:
    return "" if value is None else str(value)
