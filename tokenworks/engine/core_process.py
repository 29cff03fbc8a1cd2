"""The engine core's own process: a loop that takes requests, steps, and sends outputs.

Keeping the core apart from the process that speaks HTTP (or runs the user's script)
means tokenization, detokenization and streaming never take the GIL from the token loop;
vLLM V1 and mini-sglang split the work the same way. One Unix socket connects them
(channel.py): requests one way, outputs the other.

The caller starts this module as a fresh interpreter (`python -m tokenworks.engine.core_process
FD`, FD being its end of the socket, see client.py), never by forking or by multiprocessing's
spawn, which re-imports the caller's `__main__`: a script without an `if __name__ ==
"__main__":` guard, `python -` and a notebook would each break that. The first message says
what to load (`StartEngine`); the core then answers `Ready` (or `Fatal`).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import traceback
from collections.abc import Callable

from tokenworks.engine.channel import Channel, ChannelClosed
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
from tokenworks.errors import TokenworksError
from tokenworks.gc_tuning import calm_the_garbage_collector

logger = logging.getLogger(__name__)

UTILITY_METHODS = {"reset_prefix_cache", "stats", "load_lora", "unload_lora", "list_loras"}
START_TIMEOUT_S = 60.0  # the caller sends StartEngine right after launching us
LAST_WORDS_TIMEOUT_S = 1.0  # for a Fatal message still queued when the core gives up
# How often an idle core checks that its caller is still there. A caller that dies closes its
# end of the socket, which wakes the core at once; but a process the caller forked holds a copy
# of that end, and then only the parent's id tells.
_IDLE_POLL_S = 0.2
_PARENT_CHECK_STEPS = 64  # and a busy one, in steps

Send = Callable[[object], None]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="The tokenworks engine core (started by LLM and AsyncLLM).")
    parser.add_argument("fd", type=int, help="this process's end of the caller's socket pair")
    args = parser.parse_args(argv)
    # The caller decides when we stop: Ctrl-C in a terminal reaches the whole process group.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    channel = Channel(socket.socket(fileno=args.fd))
    try:
        start = channel.receive(START_TIMEOUT_S)
        if not start:
            raise RuntimeError(f"no StartEngine message within {START_TIMEOUT_S:.0f} s")
        if not isinstance(start[0], StartEngine):
            raise RuntimeError(f"the first message must be StartEngine, got {type(start[0]).__name__}")
        run(start[0], channel)
    except ChannelClosed:
        logger.warning("the caller closed its connection: stopping")
    except Exception as error:  # report, then die: the caller fails every waiting request
        refused = isinstance(error, RefusedStart)
        error = error.__cause__ if refused else error
        if refused:  # a checkpoint or adapter that cannot be loaded: its reason says it all
            logger.error("engine core cannot start: %s: %s", type(error).__name__, error)
        else:
            logger.exception("engine core failed")
        try:
            channel.send(Fatal(f"{type(error).__name__}: {error}", "" if refused else traceback.format_exc()))
            channel.send_all(LAST_WORDS_TIMEOUT_S)
        except ChannelClosed:
            pass
    finally:
        channel.close()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # skip interpreter teardown: torch's thread pools can stall it


class RefusedStart(Exception):
    """The core cannot load what it was asked to (its cause says why): the caller's mistake, not a bug."""


def run(start: StartEngine, channel: Channel) -> None:
    """Build the core, announce readiness, loop until told to stop or orphaned."""
    logging.basicConfig(level=start.log_level, format="engine-core %(levelname)s %(message)s")
    try:
        core = EngineCore(start.options)
    except (TokenworksError, ValueError) as error:
        raise RefusedStart() from error
    # The collector's passes over torch's modules and the model took about 5% of an offline run
    # of the benchmark's tiny model (2 threads; 9,855-9,972 tok/s, 10,374-10,476 without them).
    calm_the_garbage_collector()
    channel.send(ready_message(core))
    try:
        _loop(core, channel, start.parent_pid)
    finally:
        core.close()


def ready_message(core: EngineCore) -> Ready:
    return Ready(
        core.max_model_len, core.model.config.vocab_size, sorted(core.eos_token_ids),
        core.kv_cache.pool.num_blocks, core.kv_cache.block_size, str(core.model.device), core.list_loras(),
        core.kv_events.describe() if core.kv_events is not None else None,
    )  # fmt: skip


def _loop(core: EngineCore, channel: Channel, parent_pid: int) -> None:
    steps = 0
    while True:
        idle = not core.has_work()
        for message in channel.receive(_IDLE_POLL_S if idle else 0):
            if isinstance(message, Shutdown):
                return
            handle_message(core, message, channel.send)
        steps += 1
        # A caller killed with SIGKILL sends no Shutdown; its orphan would hold the cores and
        # the KV cache's memory for good. Orphans are re-parented, so the parent id changes.
        if (idle or steps % _PARENT_CHECK_STEPS == 0) and os.getppid() != parent_pid:
            logger.warning("the caller (pid %d) is gone: stopping", parent_pid)
            return
        if core.has_work():
            step_outputs = core.step()
            if step_outputs:  # a step of requests that do not stream has nothing to tell the caller
                channel.send(StepOutputs(step_outputs, core.last_stats))
            core.publish_kv_events()  # after its outputs: see EngineCore.publish_kv_events


def handle_message(core: EngineCore, message: object, send: Send) -> None:
    """Apply one caller message to the core; replies go through `send`."""
    if isinstance(message, AddRequest):
        try:
            core.add_request(
                message.request_id, message.prompt_token_ids, message.params, message.priority, message.arrival_time,
                message.stream, message.lora,
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
            try:
                result = getattr(core, message.method)(*message.args)
            except ValueError as error:  # the caller's mistake (a bad adapter): its answer, not the core's end
                send(UtilityResult(message.call_id, error=str(error)))
            else:
                send(UtilityResult(message.call_id, result))


if __name__ == "__main__":
    main()
