"""The engine's compiled CPU kernels: `cpu_kernels()` gives the module, or None and why.

The C++ sources here (one family of kernels a file, bindings.cpp naming them to Python) are
compiled on first use on a machine by `build.py` and checked against PyTorch by `probe.py`.
Where the build fails (no compiler, a torch without its headers) or the result disagrees
with PyTorch on a probe, the engine runs its PyTorch paths and logs why.
"""

from __future__ import annotations

import functools
from types import ModuleType

from tokenworks.engine.kernels.build import build_extension
from tokenworks.engine.kernels.probe import disagreement

__all__ = ["cpu_kernels"]


@functools.cache
def cpu_kernels() -> tuple[ModuleType | None, str]:
    """The compiled module, or None; and the reason, for the log."""
    module, how = build_extension()
    if module is None:
        return None, f"PyTorch ops ({how})"
    problem = disagreement(module)
    if problem is not None:
        return None, f"PyTorch ops ({problem})"
    return module, f"compiled CPU kernels ({how})"
