"""C extensions built on first use, for the few loops the serving path cannot afford in Python.

The engine's kernels are built by torch's cpp_extension; the router imports no torch, so its
module (router/_blocks.c) is built here: a plain CPython extension, compiled once per source,
flags and Python version with the compiler and linker Python was built with (sysconfig),
cached, and imported from the cache by every later process. Where it cannot be built (no compiler, no Python
headers, a 32-bit Python) or TOKENWORKS_NATIVE=0 is set, `load` answers None and the caller
runs its Python loops, which give the same answers: slower, never different.

The cache is $TOKENWORKS_NATIVE_DIR, else ~/.cache/tokenworks/native. A build writes a file of
its own and renames it into place, so that processes starting together (a fleet's workers, a
test session) never import a half-written one.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import logging
import os
import shlex
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path
from types import ModuleType

logger = logging.getLogger(__name__)

ENABLE_VARIABLE = "TOKENWORKS_NATIVE"
DIRECTORY_VARIABLE = "TOKENWORKS_NATIVE_DIR"
BUILD_TIMEOUT_S = 120.0
# No fused multiply-adds (which compilers may form where the target has them): the C loops must
# round every product as Python does, to give the Python loops' floats exactly. (Part of the
# cached module's name, with its source: other flags, another module.)
COMPILE_FLAGS = ("-O2", "-ffp-contract=off")
_loaded: dict[str, ModuleType | None] = {}


def cache_directory() -> Path:
    configured = os.environ.get(DIRECTORY_VARIABLE)
    return Path(configured) if configured else Path.home() / ".cache" / "tokenworks" / "native"


def load(name: str, source: Path) -> ModuleType | None:
    """The extension module `name` built from the C file `source` (whose init function is
    PyInit_<name>), or None where it cannot be built; one attempt per process."""
    if name not in _loaded:
        _loaded[name] = _load(name, source) if os.environ.get(ENABLE_VARIABLE, "1") != "0" else None
    return _loaded[name]


def _load(name: str, source: Path) -> ModuleType | None:
    if sys.maxsize < 2**62:  # a 32-bit Python
        return None
    try:
        code = source.read_bytes()
        suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
        digest = hashlib.sha256(code + sys.version.encode() + " ".join(COMPILE_FLAGS).encode()).hexdigest()[:16]
        built = cache_directory() / f"{name}-{digest}{suffix}"
        if not built.is_file():
            _build(source, built)
        spec = importlib.util.spec_from_file_location(name, built)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot import {built}")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    except (OSError, ImportError, subprocess.SubprocessError, RuntimeError) as error:  # RuntimeError: no home
        logger.info("%s: not compiled (%s); using the Python loops", name, error)
        return None


def _build(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    include = sysconfig.get_paths()["include"]
    if not (Path(include) / "Python.h").is_file():
        raise ImportError(f"no Python headers in {include}")
    # compiled and linked in one, as Python's own extensions are linked (LDSHARED: `cc -shared`
    # on Linux, `-bundle -undefined dynamic_lookup` on macOS)
    link = shlex.split(sysconfig.get_config_var("LDSHARED") or "cc -shared")
    position_independent = shlex.split(sysconfig.get_config_var("CCSHARED") or "-fPIC")
    descriptor, partial = tempfile.mkstemp(prefix=f".{target.stem}-", suffix=".so", dir=target.parent)
    os.close(descriptor)
    try:
        command = [*link, *position_independent, *COMPILE_FLAGS, f"-I{include}", str(source), "-o", partial]
        result = subprocess.run(command, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
        if result.returncode != 0:
            raise ImportError(f"{' '.join(command)} failed: {result.stderr.strip()[-2000:]}")
        os.replace(partial, target)
    finally:
        Path(partial).unlink(missing_ok=True)
