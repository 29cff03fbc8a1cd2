"""`tokenworks models` as a user runs it: a real subprocess on a real registry file, tables on
stdout, one-line errors (no traceback) on bad input, and no torch imported."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from .checkpoints import make_checkpoint


def tokenworks(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key != "TOKENWORKS_REGISTRY"} | {"COLUMNS": "250"}
    return subprocess.run(
        [sys.executable, "-m", "tokenworks", "models", *args], capture_output=True, text=True, timeout=120, cwd=cwd,
        env=env,
    )  # fmt: skip


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli-models")
    return {
        "base": make_checkpoint(root / "base"),
        "retrained": make_checkpoint(root / "retrained", seed=1),
        "wide": make_checkpoint(root / "wide", intermediate_size=320),
    }


def test_register_promote_rollback_and_history(checkpoints, tmp_path) -> None:
    db = str(tmp_path / "models.db")
    first = tokenworks("register", str(checkpoints["base"]), "--registry", db, "--reason", "pretrained")
    assert (first.returncode, first.stdout) == (0, f"registered version 1 (checkpoint, base) in {db}\n"), first.stderr
    second = tokenworks("register", str(checkpoints["retrained"]), "--registry", db, "--parent", "1")
    assert second.stdout == f"registered version 2 (checkpoint, retrained) in {db}\n"
    assert tokenworks("promote", "1", "--registry", db).stdout == "champion is now version 1\n"
    promoted = tokenworks("promote", "2", "--registry", db, "--reason", "hard-eval -12%")
    assert promoted.stdout == "champion is now version 2 (was version 1)\n"
    listed = tokenworks("list", "--registry", db).stdout
    assert "│ 2       │ retrained │ checkpoint │ champion │ 1" in listed
    shown = tokenworks("show", "2", "--registry", db).stdout
    assert "hidden_size=96" in shown and str(checkpoints["retrained"]) in shown
    rolled = tokenworks("rollback", "--registry", db, "--reason", "bad answers")
    assert rolled.stdout == "champion is back to version 1 (was version 2)\n"
    history = tokenworks("history", "--registry", db).stdout
    rows = [line for line in history.splitlines() if line.startswith("│")]
    assert [[cell.strip() for cell in row.split("│")[1:-1]][3:] for row in rows] == [
        ["register", "", "", "1", "pretrained"],
        ["register", "", "", "2", ""],
        ["promote", "champion", "", "1", ""],
        ["promote", "champion", "1", "2", "hard-eval -12%"],
        ["rollback", "champion", "2", "1", "bad answers"],
    ]


def run_in_process(args: tuple[str, ...], monkeypatch, capsys) -> tuple[int, str, str]:
    """`tokenworks models ARGS` through the console script's own main(), in this process (faster)."""
    from tokenworks.cli import main

    monkeypatch.setattr(sys, "argv", ["tokenworks", "models", *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def test_bad_input_is_one_line_without_a_traceback(checkpoints, tmp_path, monkeypatch, capsys) -> None:
    db = str(tmp_path / "models.db")
    monkeypatch.delenv("TOKENWORKS_REGISTRY", raising=False)

    def fails_with(args: tuple[str, ...], message: str) -> None:
        code, _, err = run_in_process(args, monkeypatch, capsys)
        assert code == 1, args
        assert err.startswith("error: ") and message in " ".join(err.split()), (args, err)

    fails_with(("list", "--registry", db), f"no registry at {db}")
    fails_with(("register", str(tmp_path / "absent"), "--registry", db), "absent is not a directory")
    assert run_in_process(("register", str(checkpoints["base"]), "--registry", db), monkeypatch, capsys)[0] == 0
    assert run_in_process(("promote", "1", "--registry", db), monkeypatch, capsys)[0] == 0
    fails_with(("show", "9", "--registry", db), "no version 9 in")
    fails_with(("promote", "9", "--registry", db), "no version 9 in")
    fails_with(("rollback", "--alias", "canary", "--registry", db), "no alias 'canary'")
    fails_with(("rollback", "--registry", db), "champion has held only version 1")
    fails_with(("register", str(checkpoints["wide"]), "--registry", db), "intermediate_size 320 != 288; nothing was")
    listed = run_in_process(("list", "--registry", db), monkeypatch, capsys)[1]
    assert "│ 1 " in listed and "│ 2 " not in listed


PROBE = """
import sys
from tokenworks.cli import main
sys.argv = ["tokenworks", "models", *sys.argv[1:]]
try:
    main()
finally:
    print("torch" in sys.modules, file=sys.stderr)
"""


def test_models_imports_no_torch(checkpoints, tmp_path) -> None:
    db = str(tmp_path / "models.db")
    command = [sys.executable, "-c", PROBE, "register", str(checkpoints["base"]), "--registry", db]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stderr.strip().splitlines()[-1] == "False", result.stderr
