"""Every example the README (and docs/) marks runnable runs, as written, against a real factory run.

A fenced block whose info string has the word `runnable` (```` ```python runnable ````,
```` ```bash runnable ````) is run from the directory where `make demo` would have left
`./factory` (here: the session's `tokenworks factory --quick`), Python blocks by this
interpreter, shell blocks by bash with this environment's `tokenworks` on PATH. A block marked
`runnable server` runs while `tokenworks serve factory/train/checkpoint --log-db requests.db`
listens, on a free port written into the block where it says `8000`. A README that drifts from
the code fails here.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(?P<info>[^\n`]*)\n(?P<body>.*?)^```\s*$", re.MULTILINE | re.DOTALL)
LANGUAGES = {"python": "python", "bash": "bash", "sh": "bash", "shell": "bash"}


@dataclass(frozen=True)
class Example:
    path: Path
    line: int
    language: str
    needs_server: bool
    code: str

    @property
    def name(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def runnable_examples() -> list[Example]:
    examples = []
    for path in DOCUMENTS:
        text = path.read_text(encoding="utf-8")
        for match in FENCE.finditer(text):
            words = match["info"].split()
            if "runnable" not in words:
                continue
            assert words and words[0] in LANGUAGES, f"{path.name}: a runnable block needs a language, got {words}"
            line = text.count("\n", 0, match.start()) + 1
            examples.append(Example(path, line, LANGUAGES[words[0]], "server" in words, match["body"]))
    return examples


EXAMPLES = runnable_examples()


def test_the_readme_has_runnable_examples() -> None:
    readme = [example for example in EXAMPLES if example.path.name == "README.md"]
    assert {example.language for example in readme} == {"python", "bash"}
    assert any(example.needs_server for example in readme)


@pytest.fixture(scope="module")
def demo_dir(quick_factory) -> Path:
    """The directory a user ran `make demo` in: ./factory holds the finished line."""
    workdir, result = quick_factory
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir.parent


@pytest.fixture(scope="module")
def served(demo_dir):
    """`tokenworks serve factory/train/checkpoint --log-db requests.db` on a free port, for the examples
    that talk to a server (the request log's examples read ./requests.db)."""
    from .serve.conftest import ServeProcess

    server = ServeProcess(demo_dir / "factory" / "train" / "checkpoint", "--log-db", str(demo_dir / "requests.db"))
    try:
        yield server.wait_healthy()
    finally:
        server.stop()


def run_example(example: Example, cwd: Path, port: int | None) -> subprocess.CompletedProcess:
    code = example.code if port is None else example.code.replace("8000", str(port))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    command = [sys.executable, "-c", code] if example.language == "python" else ["bash", "-euo", "pipefail", "-c", code]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("example", EXAMPLES, ids=[example.name for example in EXAMPLES])
def test_example_runs(example: Example, demo_dir: Path, request) -> None:
    port = request.getfixturevalue("served").port if example.needs_server else None
    result = run_example(example, demo_dir, port)
    assert result.returncode == 0, (
        f"{example.name} failed:\n{example.code}\n{result.stdout[-2000:]}{result.stderr[-3000:]}"
    )
