"""Compile the kernels' C++ sources into one extension module, or load it from the cache.

torch's C++ extension tooling compiles the sources with g++ and ninja (in parallel, one job
a source file), about half a minute on 2 cores, and caches the library under
~/.cache/torch_extensions (TORCH_EXTENSIONS_DIR), so later engines load it in a moment; a
file lock there serialises concurrent first builds. The build targets the CPU it runs on
(-march=native), so the library's name carries a digest of the sources and headers and of
the CPU's model and instruction-set flags: a cache shared by different machines never hands
one of them code for the other.

torch runs whichever `ninja` comes first on PATH. The one pip installed beside this interpreter
(the `ninja` dependency) is put first for the build, so that every process of an environment
builds with the same ninja however it was started: a process not started from an activated
virtualenv otherwise finds the system's ninja, or none at all (then no kernels), and two ninja
versions sharing a build directory rebuild all of it at each switch (1.13 keys its log by
another hash than 1.11: the test suite built the kernels twice, and `make demo` after it a third
time, 20-40 s each).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import platform
import sysconfig
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import torch

logger = logging.getLogger(__name__)

DIRECTORY = Path(__file__).parent
SOURCES = sorted(DIRECTORY.glob("*.cpp"))  # one family of kernels a file; bindings.cpp names them to Python
HEADERS = sorted(DIRECTORY.glob("*.h"))
# -fopenmp: ATen's parallel_for is a header whose OpenMP pragma compiles to nothing without it,
# which left the kernels on one thread. The library then needs libgomp.so.1, and the dynamic
# linker hands it the copy torch already loaded (same soname): one OpenMP runtime, one pool.
COMPILE_FLAGS = ["-O3", "-march=native", "-fopenmp"]


def build_extension() -> tuple[ModuleType | None, str]:
    """The compiled module and how it came (for the log), or None and why it did not build."""
    try:
        from torch.utils.cpp_extension import load
    except ImportError as error:  # torch's extension tooling needs setuptools
        return None, f"no C++ extension tooling: {error}"
    name = f"tokenworks_cpu_kernels_{build_digest()}"
    logger.info("loading the CPU kernels %s (compiled on first use on a machine, about half a minute)", name)
    started = time.perf_counter()
    try:
        with _environment_ninja_first():
            module = load(
                name=name,
                sources=[str(source) for source in SOURCES],
                extra_cflags=COMPILE_FLAGS,
                extra_ldflags=["-fopenmp"],
                verbose=False,
            )
    except Exception as error:  # a compiler error, a missing ninja or g++: the PyTorch paths still work
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return None, f"the CPU kernels did not build: {first_line}"
    return module, f"{name}, loaded in {time.perf_counter() - started:.1f} s"


def build_digest() -> str:
    """Sources, headers, flags, torch version and this CPU: what the compiled library depends on;
    and where the sources are, since torch's build files name them by path: two checkouts (a git
    worktree beside its repository) with one cache otherwise rebuilt the library at each switch."""
    digest = hashlib.sha256(str(DIRECTORY.resolve()).encode())
    for path in [*SOURCES, *HEADERS]:
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    digest.update(" ".join(COMPILE_FLAGS).encode())
    digest.update(torch.__version__.encode())
    digest.update(platform.machine().encode())
    digest.update(_cpu_identity().encode())
    return digest.hexdigest()[:16]


def _cpu_identity() -> str:
    """The model name and flag lines of /proc/cpuinfo's first processor ('' elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor()
    first = text.split("\n\n", 1)[0]
    return "\n".join(
        line for line in first.splitlines() if line.split(":")[0].strip() in ("model name", "flags", "Features")
    )


def path_with_environment_ninja(path: str, scripts: str | Path) -> str:
    """PATH with `scripts` (this environment's scripts directory) first when a ninja is there."""
    scripts = str(scripts)
    if not (Path(scripts) / "ninja").is_file():
        return path
    others = [entry for entry in path.split(os.pathsep) if entry and entry != scripts]
    return os.pathsep.join([scripts, *others])


@contextlib.contextmanager
def _environment_ninja_first() -> Iterator[None]:
    """PATH, while torch builds, with this environment's ninja first (see the module's docstring)."""
    before = os.environ.get("PATH", "")
    os.environ["PATH"] = path_with_environment_ninja(before, sysconfig.get_path("scripts"))
    try:
        yield
    finally:
        os.environ["PATH"] = before
