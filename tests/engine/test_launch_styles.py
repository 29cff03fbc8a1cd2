"""`LLM` and `AsyncLLM` work wherever Python runs: the same greedy tokens from every way of running code.

The engine core is a fresh interpreter (`python -m tokenworks.engine.core_process`), so nothing
depends on the caller's `__main__`: a script without a main guard, `python -c`, `python -`
(stdin) and a Jupyter kernel all start it. Each style also leaves no engine process behind,
even when the code never calls shutdown.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tokenworks.engine import LLM, SamplingParams

PROMPTS = [[5, 6, 7, 8], [40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50]]
MAX_TOKENS = 8
OPTIONS = "threads=1, kv_cache_memory_gib=0.05"

# Plain top-level code, as a user copies it from the README: no main guard, no shutdown.
OFFLINE = """
import json, os
from tokenworks.engine import LLM, SamplingParams
llm = LLM({model!r}, {options})
outputs = llm.generate({prompts!r}, SamplingParams(max_tokens={max_tokens}, temperature=0, ignore_eos=True))
print("RESULT", json.dumps({{"tokens": [o.token_ids for o in outputs], "core_pid": llm.client.process.pid}}))
"""
ASYNC = """
import asyncio, json
from tokenworks.engine import AsyncLLM, SamplingParams

async def main():
    engine = AsyncLLM({model!r}, {options})
    params = SamplingParams(max_tokens={max_tokens}, temperature=0, ignore_eos=True)
    tokens = []
    for prompt in {prompts!r}:
        async for output in engine.generate(prompt, params):
            pass
        tokens.append(output.token_ids)
    print("RESULT", json.dumps({{"tokens": tokens, "core_pid": engine.client.process.pid}}))
    await engine.shutdown()

asyncio.run(main())
"""


def code(template: str, model_dir: Path) -> str:
    return template.format(model=str(model_dir), options=OPTIONS, prompts=PROMPTS, max_tokens=MAX_TOKENS)


def result_of(output: str) -> dict:
    lines = [line for line in output.splitlines() if line.startswith("RESULT ")]
    assert lines, output
    return json.loads(lines[-1][len("RESULT ") :])


def run_python(args: list[str], cwd: Path, stdin: str | None = None) -> dict:
    # The child finds tokenworks as an installed package would be found: not through the test's cwd.
    completed = subprocess.run(
        [sys.executable, *args], cwd=cwd, input=stdin, capture_output=True, text=True, timeout=600
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    return result_of(completed.stdout)


def assert_gone(pid: int, within_s: float = 15.0) -> None:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        stat = Path(f"/proc/{pid}/stat")
        if stat.exists() and stat.read_text().split()[2] == "Z":
            return  # exited; its parent (gone too) left it to init to reap
        time.sleep(0.1)
    pytest.fail(f"engine core {pid} outlived the program that started it")


@pytest.fixture(scope="module")
def expected(llama_dir) -> list[list[int]]:
    """The same generation with the core in this process: the reference every style must match."""
    llm = LLM(llama_dir, multiprocess=False, threads=1, kv_cache_memory_gib=0.05)
    params = SamplingParams(max_tokens=MAX_TOKENS, temperature=0, ignore_eos=True)
    tokens = [output.token_ids for output in llm.generate(PROMPTS, params)]
    assert all(len(ids) == MAX_TOKENS for ids in tokens)
    return tokens


def script(tmp_path: Path, source: str, guarded: bool = False) -> list[str]:
    if guarded:
        source = "if __name__ == '__main__':\n    " + source.strip().replace("\n", "\n    ") + "\n"
    path = tmp_path / "example.py"
    path.write_text(source)
    return [str(path)]


# Each style: the interpreter's arguments and its stdin, for a program's source.
STYLES = {
    "a script without a main guard": lambda tmp_path, source: (script(tmp_path, source), None),
    "a script with a main guard": lambda tmp_path, source: (script(tmp_path, source, guarded=True), None),
    "python -c": lambda tmp_path, source: (["-c", source], None),
    "python - (stdin)": lambda tmp_path, source: (["-"], source),
}


@pytest.mark.parametrize("style", STYLES)
def test_llm_from(style: str, llama_dir, tmp_path, expected) -> None:
    args, stdin = STYLES[style](tmp_path, code(OFFLINE, llama_dir))
    result = run_python(args, tmp_path, stdin)
    assert result["tokens"] == expected
    assert_gone(result["core_pid"])


def test_async_llm_from_a_script(llama_dir, tmp_path, expected) -> None:
    result = run_python(["-c", code(ASYNC, llama_dir)], tmp_path)
    assert result["tokens"] == expected
    assert_gone(result["core_pid"])


def test_a_jupyter_kernel(llama_dir, tmp_path, expected) -> None:
    """A real IPython kernel (ipykernel, as Jupyter runs it): its `__main__` has no file to re-import."""
    manager_module = pytest.importorskip("jupyter_client.manager")
    manager, client = manager_module.start_new_kernel(kernel_name="python3", cwd=str(tmp_path))
    try:
        stdout: list[str] = []

        def collect(message: dict) -> None:
            if message["msg_type"] == "stream":
                stdout.append(message["content"]["text"])
            elif message["msg_type"] == "error":
                stdout.append("\n".join(message["content"]["traceback"]))

        reply = client.execute_interactive(code(OFFLINE, llama_dir), timeout=600, output_hook=collect)
        assert reply["content"]["status"] == "ok", "".join(stdout)
        result = result_of("".join(stdout))
        assert result["tokens"] == expected
        # a notebook keeps its kernel running: the core lives until the kernel stops
        os.kill(result["core_pid"], 0)
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=False)
    assert_gone(result["core_pid"])
