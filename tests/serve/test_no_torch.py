"""The serving front imports no torch: it tokenizes, detokenizes and streams; the engine core computes.

torch costs the HTTP process over a second of start-up and hundreds of MB, and its threads
would compete with the engine's for the same cores.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from .conftest import ServeProcess

PROBE = """
import sys
import tokenworks.serve.app, tokenworks.serve.cli, tokenworks.engine
from tokenworks.serve import ServerConfig, create_app
create_app(ServerConfig(model=sys.argv[1]))
print(sorted(name for name in ("torch", "tokenworks.engine.core", "tokenworks.engine.model_runner") if name in sys.modules))
"""


def test_importing_the_server_app_loads_no_torch(serve_model_dir) -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(serve_model_dir)], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


def test_a_running_server_maps_no_torch_library_but_its_engine_does(serve_model_dir) -> None:
    server = ServeProcess(serve_model_dir)
    try:
        server.wait_healthy()
        assert "libtorch" not in Path(f"/proc/{server.process.pid}/maps").read_text()
        assert "libtorch" in Path(f"/proc/{server.engine_pid()}/maps").read_text()
    finally:
        server.stop()
