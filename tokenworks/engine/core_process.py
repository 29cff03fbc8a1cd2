"""The engine core's own process: a loop that takes requests, steps, and sends outputs.

Keeping the core apart from the process that speaks HTTP (or runs the user's script)
means tokenization, detokenization and streaming never take the GIL from the token loop;
vLLM V1 and mini-sglang split the work the same way. Two ZMQ sockets connect them: the
caller PUSHes requests to the core's PULL, the core PUSHes outputs to the caller's PULL.

The caller starts this module as a fresh interpreter (`python -m tokenworks.engine.core_process
INPUT OUTPUT`, see client.py), never by forking or by multiprocessing's spawn, which re-imports
the caller's `__main__`: a script without an `if __name__ == "__main__":` guard, `python -`
and a notebook would each break that. The first message on INPUT says what to load
(`StartEngine`); the core then answers `Ready` (or `Fatal`) on OUTPUT.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import pickle
import signal
import sys
import traceback
from collections.abc import Callable

import zmq

from tokenworks.engine.core import EngineCore
from tokenworks.engine.messages import (
    Abort,
    AddRequest,
    Fatal,
    Ready,
    RequestError,
    Shutdown,
    StartEngine,
    StepOutputs,
    UtilityCall,
    UtilityResult,
)

logger = logging.getLogger(__name__)

UTILITY_METHODS = {"reset_prefix_cache", "stats"}
START_TIMEOUT_MS = 60_000  # the caller sends StartEngine right after launching us
_IDLE_POLL_MS = 200  # also how often an idle core checks that its caller is still there
_PARENT_CHECK_STEPS = 64  # and a busy one, in steps

Send = Callable[[object], None]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="The tokenworks engine core (started by LLM and AsyncLLM).")
    parser.add_argument("input_address", help="ZMQ address to bind for the caller's messages")
    parser.add_argument("output_address", help="ZMQ address of the caller's socket for outputs")
    args = parser.parse_args(argv)
    # The caller decides when we stop: Ctrl-C in a terminal reaches the whole process group.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    context = zmq.Context()
    inputs = context.socket(zmq.PULL)
    inputs.bind(args.input_address)
    outputs = context.socket(zmq.PUSH)
    outputs.connect(args.output_address)
    send: Send = lambda message: outputs.send(pickle.dumps(message, pickle.HIGHEST_PROTOCOL))  # noqa: E731
    try:
        if not inputs.poll(START_TIMEOUT_MS):
            raise RuntimeError(f"no StartEngine message within {START_TIMEOUT_MS / 1000:.0f} s")
        start = pickle.loads(inputs.recv())
        if not isinstance(start, StartEngine):
            raise RuntimeError(f"the first message must be StartEngine, got {type(start).__name__}")
        run(start, inputs, send)
    except Exception as error:  # report, then die: the caller fails every waiting request
        send(Fatal(f"{type(error).__name__}: {error}", traceback.format_exc()))
        logger.exception("engine core failed")
    finally:
        inputs.close(linger=0)
        outputs.close(linger=1000)
        context.term()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # skip interpreter teardown: torch's thread pools can stall it


def run(start: StartEngine, inputs: zmq.Socket, send: Send) -> None:
    """Build the core, announce readiness, loop until told to stop or orphaned."""
    logging.basicConfig(level=start.log_level, format="engine-core %(levelname)s %(message)s")
    core = EngineCore(start.options)
    _calm_the_garbage_collector()
    send(ready_message(core))
    _loop(core, inputs, send, start.parent_pid)


def ready_message(core: EngineCore) -> Ready:
    return Ready(
        core.max_model_len, core.model.config.vocab_size, sorted(core.eos_token_ids),
        core.kv_cache.pool.num_blocks, core.kv_cache.block_size, str(core.model.device),
    )  # fmt: skip


def _calm_the_garbage_collector() -> None:
    """Every step allocates lists of token ids, slots and outputs, so Python's collector runs
    often, and each time its oldest generation fills it walks every object of the process
    (torch's modules, the model, the requests): about 5% of an offline run of the benchmark's
    tiny model (2 threads; 9,855-9,972 tok/s with the defaults, 10,374-10,476 with these).
    Objects from startup move out of its reach (vLLM's engine core freezes them too) and
    collections come less often; the core's cycles are few (requests drop their references)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)


def _loop(core: EngineCore, inputs: zmq.Socket, send: Send, parent_pid: int) -> None:
    steps = 0
    while True:
        timeout = 0 if core.has_work() else _IDLE_POLL_MS
        while inputs.poll(timeout):
            message = pickle.loads(inputs.recv())
            if isinstance(message, Shutdown):
                return
            handle_message(core, message, send)
            timeout = 0
        steps += 1
        # A caller killed with SIGKILL sends no Shutdown; its orphan would hold the cores and
        # the KV cache's memory for good. Orphans are re-parented, so the parent id changes.
        if (timeout or steps % _PARENT_CHECK_STEPS == 0) and os.getppid() != parent_pid:
            logger.warning("the caller (pid %d) is gone: stopping", parent_pid)
            return
        if core.has_work():
            step_outputs = core.step()
            if step_outputs:  # a step of requests that do not stream has nothing to tell the caller
                send(StepOutputs(step_outputs, core.last_stats))


def handle_message(core: EngineCore, message: object, send: Send) -> None:
    """Apply one caller message to the core; replies go through `send`."""
    if isinstance(message, AddRequest):
        try:
            core.add_request(
                message.request_id, message.prompt_token_ids, message.params, message.priority, message.arrival_time,
                message.stream,
            )  # fmt: skip
        except ValueError as error:
            send(RequestError(message.request_id, str(error)))
    elif isinstance(message, Abort):
        send(StepOutputs(core.abort(message.request_ids), core.last_stats))
    elif isinstance(message, UtilityCall):
        if message.method not in UTILITY_METHODS:
            send(UtilityResult(message.call_id, error=f"unknown engine method {message.method!r}"))
        elif message.method == "stats":
            send(UtilityResult(message.call_id, core.last_stats))
        else:
            send(UtilityResult(message.call_id, getattr(core, message.method)(*message.args)))


if __name__ == "__main__":
    main()
