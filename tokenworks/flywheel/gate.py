"""The promotion gate: a pure decision over the candidate's and the champion's evaluations.

Promote only when the candidate is clearly better where the flywheel aimed it (hard-eval loss
down by at least `margin`, relative) and no worse where it did not aim (general validation loss
up by at most `tolerance`, relative), and, if asked, answers at least as many items exactly.
Boundaries are inclusive: exactly 10% better passes a 0.10 margin. Relative changes are compared
after rounding to 12 decimals, so a float's last bit (1.0 -> 0.9 is 0.0999...98) does not decide.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from tokenworks.errors import ConfigError

DECIMALS = 12


@dataclass(frozen=True, slots=True)
class GateConfig:
    margin: float = 0.10  # hard-eval loss must fall by at least this share of the champion's
    tolerance: float = 0.02  # general validation loss may rise by at most this share
    require_exact_match: bool = False  # also: exact-match rate on hard-eval not below the champion's

    def __post_init__(self) -> None:
        if not 0 <= self.margin < 1:
            raise ConfigError(f"gate margin must be in [0, 1), got {self.margin}")
        if self.tolerance < 0:
            raise ConfigError(f"gate tolerance must be >= 0, got {self.tolerance}")

    @classmethod
    def from_toml(cls, path: Path, section: str = "gate") -> GateConfig:
        """The `[gate]` table of a TOML file (missing keys keep their defaults; unknown keys are errors)."""
        try:
            document = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
            raise ConfigError(f"cannot read the gate config {path}: {error}") from None
        table = document.get(section, {})
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: [{section}] must be a table")
        known = {f.name: f.type for f in fields(cls)}
        unknown = sorted(set(table) - set(known))
        if unknown:
            raise ConfigError(f"{path}: [{section}] has unknown key {unknown[0]!r}; known: {', '.join(known)}")
        for key, value in table.items():
            wanted = bool if key == "require_exact_match" else (int, float)
            if isinstance(value, bool) != (wanted is bool) or not isinstance(value, wanted):
                raise ConfigError(f"{path}: [{section}] {key} must be a {'boolean' if wanted is bool else 'number'}")
        return cls(**table)


@dataclass(frozen=True, slots=True)
class Evaluation:
    """One model's figures: mean NLL per reference token on hard-eval, the general validation loss,
    and the share of hard-eval items answered exactly (None where not measured)."""

    hard_eval_loss: float
    general_loss: float
    exact_match: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "hard_eval_loss": self.hard_eval_loss,
            "general_loss": self.general_loss,
            "exact_match": self.exact_match,
        }


@dataclass(frozen=True, slots=True)
class Decision:
    promote: bool
    reasons: list[str] = field(default_factory=list)  # every rule, passed or failed, with its numbers
    failed: list[str] = field(default_factory=list)  # the names of the rules that failed (RULE_NAMES)

    def as_dict(self) -> dict[str, Any]:
        return {"promote": self.promote, "reasons": list(self.reasons), "failed": list(self.failed)}


# The rules by name, for logs and reports that must say which one refused a candidate.
HARD_EVAL_MARGIN, GENERAL_TOLERANCE, EXACT_MATCH = "hard_eval_margin", "general_tolerance", "exact_match"


def relative_change(before: float, after: float) -> float:
    """(after - before) / before, rounded to DECIMALS."""
    if before <= 0:
        raise ConfigError(f"a loss to compare against must be positive, got {before}")
    return round((after - before) / before, DECIMALS)


def decide(candidate: Evaluation, champion: Evaluation, config: GateConfig = GateConfig()) -> Decision:
    """Whether the candidate replaces the champion, and why, rule by rule."""
    reasons: list[str] = []
    failed: list[str] = []

    improvement = -relative_change(champion.hard_eval_loss, candidate.hard_eval_loss)
    ok = improvement >= config.margin
    failed += [] if ok else [HARD_EVAL_MARGIN]
    reasons.append(
        f"hard-eval loss {champion.hard_eval_loss:.4f} -> {candidate.hard_eval_loss:.4f}: "
        f"{improvement:+.2%} better, {'at least' if ok else 'less than'} the {config.margin:.2%} margin"
    )

    change = relative_change(champion.general_loss, candidate.general_loss)
    ok = change <= config.tolerance
    failed += [] if ok else [GENERAL_TOLERANCE]
    reasons.append(
        f"general loss {champion.general_loss:.4f} -> {candidate.general_loss:.4f}: "
        f"{change:+.2%}, {'within' if ok else 'beyond'} the +{config.tolerance:.2%} tolerance"
    )

    if config.require_exact_match:
        if candidate.exact_match is None or champion.exact_match is None:
            failed.append(EXACT_MATCH)
            reasons.append("exact match is required but was not measured for both models")
        else:
            ok = candidate.exact_match >= champion.exact_match
            failed += [] if ok else [EXACT_MATCH]
            reasons.append(
                f"exact match {champion.exact_match:.2%} -> {candidate.exact_match:.2%}: "
                f"{'not worse' if ok else 'worse'}"
            )
    return Decision(not failed, reasons, failed)
