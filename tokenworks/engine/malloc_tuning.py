"""Keep freed host memory in the engine's process instead of handing it back to the OS.

A CPU step allocates and frees the same large tensors every step (activations of a
2,048-token prefill, attention scores, logits). glibc's malloc serves blocks above its
mmap threshold (at most 32 MiB) with a fresh mapping each time, whose pages then fault in
one by one on first touch: a quarter of a million page faults per offline batch of the
tiny model, and as much time as the step's matrix products. Raising the mmap and trim
thresholds lets freed blocks be reused, as jemalloc or tcmalloc would, at the price of the
process keeping its peak heap.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

logger = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
_M_MMAP_THRESHOLD = -3
_THRESHOLD_BYTES = 1 << 30  # blocks up to 1 GiB come from the heap and stay there when freed


def keep_freed_memory() -> bool:
    """Tune glibc's malloc as described above; False (and nothing changed) off glibc."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other C libraries have no mallopt
        return False
    done = bool(mallopt(_M_MMAP_THRESHOLD, _THRESHOLD_BYTES)) and bool(mallopt(_M_TRIM_THRESHOLD, _THRESHOLD_BYTES))
    logger.debug("malloc keeps freed memory: %s", done)
    return done
