"""The engine core's own process: a loop that takes requests, steps, and sends outputs.

Keeping the core apart from the process that speaks HTTP (or runs the user's script)
means tokenization, detokenization and streaming never take the GIL from the token loop;
vLLM V1 and mini-sglang split the work the same way. Two ZMQ sockets connect them: the
caller PUSHes requests to the core's PULL, the core PUSHes outputs to the caller's PULL.
"""

from __future__ import annotations

import gc
import logging
import os
import pickle
import signal
import traceback

import zmq

from tokenworks.engine.core import EngineCore
from tokenworks.engine.messages import (
    Abort,
    AddRequest,
    Fatal,
    Ready,
    RequestError,
    Shutdown,
    StepOutputs,
    UtilityCall,
    UtilityResult,
)
from tokenworks.engine.options import EngineOptions

logger = logging.getLogger(__name__)

UTILITY_METHODS = {"reset_prefix_cache", "stats"}
_IDLE_POLL_MS = 200


def run_engine_core(options: EngineOptions, input_address: str, output_address: str, log_level: int) -> None:
    """Process entry point: build the core, announce readiness, loop until told to stop."""
    logging.basicConfig(level=log_level, format="engine-core %(levelname)s %(message)s")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when we stop
    context = zmq.Context()
    inputs = context.socket(zmq.PULL)
    inputs.connect(input_address)
    outputs = context.socket(zmq.PUSH)
    outputs.connect(output_address)
    send = lambda message: outputs.send(pickle.dumps(message, pickle.HIGHEST_PROTOCOL))  # noqa: E731
    try:
        core = EngineCore(options)
        _calm_the_garbage_collector()
        send(
            Ready(
                core.max_model_len, core.model.config.vocab_size, sorted(core.eos_token_ids),
                core.kv_cache.pool.num_blocks, core.kv_cache.block_size, str(core.model.device),
            )
        )  # fmt: skip
        _loop(core, inputs, send)
    except Exception as error:  # report, then die: the caller fails every waiting request
        send(Fatal(f"{type(error).__name__}: {error}", traceback.format_exc()))
        logger.exception("engine core failed")
    finally:
        inputs.close(linger=0)
        outputs.close(linger=1000)
        context.term()
    os._exit(0)  # skip interpreter teardown: torch's thread pools can stall it


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


def _loop(core: EngineCore, inputs: zmq.Socket, send) -> None:
    while True:
        timeout = 0 if core.has_work() else _IDLE_POLL_MS
        while inputs.poll(timeout):
            message = pickle.loads(inputs.recv())
            if isinstance(message, Shutdown):
                return
            handle_message(core, message, send)
            timeout = 0
        if core.has_work():
            step_outputs = core.step()
            if step_outputs:  # a step of requests that do not stream has nothing to tell the caller
                send(StepOutputs(step_outputs, core.last_stats))


def handle_message(core: EngineCore, message: object, send) -> None:
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
