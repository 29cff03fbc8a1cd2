"""Keep Python's garbage collector off the token path of a long-running process.

Every token allocates short-lived objects (a step's outputs, their unpickled copies, the
response chunks), so the collector runs often; and each time its oldest generation fills, it
walks every object of the process: torch's modules and the model in the engine core, FastAPI's
and pydantic's machinery in the HTTP process. Objects made at startup are moved out of its
reach (vLLM freezes them too) and collections come less often; the cycles a request leaves
are few (requests drop their references), so memory stays flat.
"""

from __future__ import annotations

import gc


def calm_the_garbage_collector() -> None:
    """Call once startup is done: what exists now is never scanned again."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)
