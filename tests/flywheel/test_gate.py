"""The promotion gate's decisions on crafted evaluations: exact outcomes, boundaries included."""

from __future__ import annotations

import pytest

from tokenworks.errors import ConfigError
from tokenworks.flywheel.gate import Evaluation, GateConfig, decide

CHAMPION = Evaluation(hard_eval_loss=2.0, general_loss=3.0, exact_match=0.25)


@pytest.mark.parametrize(
    ("hard", "general", "promote"),
    [
        (1.8, 3.0, True),  # exactly 10% better, general unchanged: the margin is inclusive
        (1.8000001, 3.0, False),  # a hair short of 10%
        (1.5, 3.06, True),  # general up exactly 2%: the tolerance is inclusive
        (1.5, 3.0600001, False),  # general up a hair over 2%
        (1.5, 2.5, True),  # better on both
        (2.2, 2.0, False),  # worse on hard-eval however good elsewhere
        (2.0, 3.0, False),  # no change
    ],
)
def test_margin_and_tolerance(hard: float, general: float, promote: bool) -> None:
    assert decide(Evaluation(hard, general), CHAMPION).promote is promote


def test_failed_names_every_rule_that_refused() -> None:
    assert decide(Evaluation(2.2, 3.5), CHAMPION).failed == ["hard_eval_margin", "general_tolerance"]
    assert decide(Evaluation(1.5, 3.0), CHAMPION).failed == []


def test_a_float_boundary_is_not_decided_by_the_last_bit() -> None:
    # (1.0 - 0.9) / 1.0 is 0.09999999999999998 in floats; the 10% boundary still passes.
    assert decide(Evaluation(0.9, 1.0), Evaluation(1.0, 1.0)).promote is True
    assert decide(Evaluation(1.0, 1.02), Evaluation(1.0, 1.0), GateConfig(margin=0.0)).promote is True


def test_reasons_carry_the_numbers() -> None:
    decision = decide(Evaluation(1.7, 3.09, 0.5), CHAMPION)
    assert decision.promote is False
    assert decision.reasons == [
        "hard-eval loss 2.0000 -> 1.7000: +15.00% better, at least the 10.00% margin",
        "general loss 3.0000 -> 3.0900: +3.00%, beyond the +2.00% tolerance",
    ]
    assert decision.as_dict() == {"promote": False, "reasons": decision.reasons, "failed": ["general_tolerance"]}


def test_exact_match_when_required() -> None:
    config = GateConfig(require_exact_match=True)
    assert decide(Evaluation(1.5, 3.0, 0.25), CHAMPION, config).promote is True  # equal is not worse
    worse = decide(Evaluation(1.5, 3.0, 0.2), CHAMPION, config)
    assert worse.promote is False and worse.reasons[-1] == "exact match 25.00% -> 20.00%: worse"
    assert worse.failed == ["exact_match"]
    unmeasured = decide(Evaluation(1.5, 3.0), CHAMPION, config)
    assert unmeasured.promote is False and unmeasured.failed == ["exact_match"]
    assert unmeasured.reasons[-1] == "exact match is required but was not measured for both models"
    # Not required: a worse exact match does not block, and is not a reason.
    assert decide(Evaluation(1.5, 3.0, 0.0), CHAMPION).promote is True
    assert len(decide(Evaluation(1.5, 3.0, 0.0), CHAMPION).reasons) == 2


def test_config_from_toml(tmp_path) -> None:
    path = tmp_path / "flywheel.toml"
    path.write_text("[gate]\nmargin = 0.15\nrequire_exact_match = true\n")
    assert GateConfig.from_toml(path) == GateConfig(margin=0.15, tolerance=0.02, require_exact_match=True)
    path.write_text("[other]\nx = 1\n")
    assert GateConfig.from_toml(path) == GateConfig()
    for text, message in [
        ("[gate]\nmargins = 0.1\n", "unknown key 'margins'"),
        ('[gate]\nmargin = "10%"\n', "margin must be a number"),
        ("[gate]\nrequire_exact_match = 1\n", "require_exact_match must be a boolean"),
        ("[gate]\nmargin = 1.5\n", r"margin must be in \[0, 1\), got 1.5"),
        ("[gate]\ntolerance = -0.1\n", "tolerance must be >= 0"),
        ("[gate\n", "cannot read the gate config"),
    ]:
        path.write_text(text)
        with pytest.raises(ConfigError, match=message):
            GateConfig.from_toml(path)


def test_a_champion_loss_that_is_not_positive_is_an_error() -> None:
    with pytest.raises(ConfigError, match=r"must be positive, got 0.0"):
        decide(Evaluation(1.0, 1.0), Evaluation(0.0, 1.0))
