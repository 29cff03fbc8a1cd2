"""`AsyncLLM`: the engine for asyncio callers (the HTTP server), streaming deltas.

    engine = AsyncLLM("path/to/checkpoint")             # or: await AsyncLLM.start(...)
    async for output in engine.generate("Hello", SamplingParams(max_tokens=32)):
        print(output.delta_text, end="")

The event loop reads the core's socket as outputs arrive and routes each request's delta to
its queue; a core that dies (busy or idle) closes that socket, which fails every open stream
with `EngineDeadError` at once, and the callbacks given to `on_death` hear of it. A caller
that stops iterating (a client disconnect cancels it) aborts its request, which frees the
request's KV blocks in the core at once. `restart` starts a new core in place of a dead one.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from tokenworks.engine.client import EngineCoreClient, EngineDeadError
from tokenworks.engine.frontend import Frontend, Prompt
from tokenworks.engine.messages import (
    Abort,
    AddRequest,
    Ready,
    RequestError,
    StepOutputs,
    StepStats,
    UtilityCall,
    UtilityResult,
)
from tokenworks.engine.options import EngineOptions
from tokenworks.engine.output_processor import RequestState
from tokenworks.engine.request_output import RequestOutput
from tokenworks.engine.sampling_params import SamplingParams

logger = logging.getLogger(__name__)


# OpenMP's threads spin about 10 us before sleeping (GOMP_SPINCOUNT, ~100 a microsecond): long
# enough to ride through the microseconds between a prefill's or a 5-8-row step's parallel
# regions, short enough to leave the cores to the HTTP process between steps. Against sleeping
# at once (tokenworks serve, tiny, 2 threads, 5 rounds): TTFT -19%, 8 streams +34% tokens/s, 32
# streams +1%; 20,000 (LLM's) cost 32 streams 18-30% (docs/benchmarks.md, Interactivity).
SERVING_OMP_SPIN_COUNT = 1000


class AsyncLLM:
    def __init__(self, model: str | Path, **engine_options: Any) -> None:
        """Start the engine core and wait for it (blocking, as vLLM's AsyncLLM does).

        On an event loop that must keep serving while the model loads, use `await AsyncLLM.start(...)`.
        `omp_spin_count` defaults to SERVING_OMP_SPIN_COUNT (None sleeps at once).
        """
        self._setup(_serving_options(model, engine_options))
        client = EngineCoreClient(self.options)
        self._attach(client, client.wait_ready())

    @classmethod
    async def start(cls, model: str | Path, **engine_options: Any) -> AsyncLLM:
        """Start the engine core without blocking the running event loop (options as __init__'s)."""
        engine = cls.__new__(cls)
        engine._setup(_serving_options(model, engine_options))
        await engine._start_core()
        return engine

    def _setup(self, options: EngineOptions) -> None:
        self.options = options
        self.frontend: Frontend | None = None
        self._streams: dict[str, tuple[RequestState, asyncio.Queue]] = {}
        self._calls: dict[int, asyncio.Future] = {}
        self._call_ids = itertools.count(1)
        self._listening = False
        self._death_callbacks: list[Callable[[EngineDeadError], None]] = []
        self.last_stats: StepStats | None = None
        self.dead_error: EngineDeadError | None = None

    async def _start_core(self) -> None:
        client = EngineCoreClient(self.options)
        self._attach(client, await client.wait_ready_async())

    def _attach(self, client: EngineCoreClient, ready: Ready) -> None:
        self.client = client
        if self.frontend is None:
            self.frontend = Frontend(self.options.model, ready)
        else:  # a restarted core: the same tokenizer, and request ids that go on counting
            self.frontend.ready = ready
            self.frontend.loras = dict(ready.loras)  # adapters loaded at run time are gone with the old core
        self.tokenizer = self.frontend.tokenizer
        self.max_model_len = ready.max_model_len
        self.dead_error = None
        self._listening = False
        with contextlib.suppress(RuntimeError):  # no running loop: the first request starts listening
            self._ensure_listening()

    # ---- requests ----------------------------------------------------------------------

    def prepare(self, prompt: Prompt, params: SamplingParams, lora: str | None = None) -> list[int]:
        """Tokenize and check a prompt: raises ValueError (a 400) before anything is queued."""
        prompt_ids = self.frontend.prompt_ids(prompt)
        self.frontend.check(prompt_ids, params, lora)
        return prompt_ids

    async def generate(
        self, prompt: Prompt, params: SamplingParams, request_id: str | None = None, priority: int = 0,
        lora: str | None = None,
    ) -> AsyncIterator[RequestOutput]:  # fmt: skip
        """Yield the request's output as it grows (each with its delta), the last one finished.
        `lora` names a loaded LoRA adapter; None is the base model."""
        self._raise_if_dead()
        request_id = request_id or self.frontend.next_request_id()
        if request_id in self._streams:
            raise ValueError(f"request id {request_id!r} is already in use")
        prompt_ids = self.prepare(prompt, params, lora)
        queue: asyncio.Queue = asyncio.Queue()
        self._streams[request_id] = (self.frontend.new_state(request_id, prompt_ids, params), queue)
        self._ensure_listening()
        self.client.send(AddRequest(request_id, prompt_ids, params, priority, arrival_time=time.monotonic(), lora=lora))
        finished = False
        try:
            while not finished:
                item = await queue.get()
                if isinstance(item, Exception):
                    raise item
                finished = item.finished
                yield item
        finally:
            self._streams.pop(request_id, None)
            if not finished and self.dead_error is None:
                self.client.send(Abort([request_id]))

    async def abort(self, request_id: str) -> None:
        self.client.send(Abort([request_id]))

    @property
    def num_open_requests(self) -> int:
        return len(self._streams)

    async def call(self, method: str, *args: Any) -> Any:
        """Run one of the core's utility methods (reset_prefix_cache, stats) and return its result."""
        self._raise_if_dead()
        call_id = next(self._call_ids)
        future = asyncio.get_running_loop().create_future()
        self._calls[call_id] = future
        self._ensure_listening()
        self.client.send(UtilityCall(call_id, method, args))
        return await future

    @property
    def loras(self) -> dict[str, str]:
        """The LoRA adapters loaded now: name -> path."""
        return self.frontend.loras

    async def load_lora(self, name: str, path: str | Path, replace: bool = False) -> dict[str, Any]:
        """Load a PEFT adapter under `name` (ValueError naming what does not fit); requests then
        pick it with `lora=name`. `replace`: in place of the adapter of that name, with no
        request failing (those running finish with the old one). Returns its name, path, rank
        and targets."""
        info = await self.call("load_lora", name, str(path), replace)
        self.frontend.loras[name] = info["path"]
        return info

    async def unload_lora(self, name: str) -> None:
        """New requests can no longer use it; those already running finish with it."""
        self.frontend.loras.pop(name, None)  # at once: no request sent from now on names it
        await self.call("unload_lora", name)

    # ---- the core's messages -----------------------------------------------------------

    def _ensure_listening(self) -> None:
        if not self._listening:
            self.client.listen(self._dispatch_all, self._died)
            self._listening = True

    def _dispatch_all(self, messages: list[object]) -> None:
        try:
            for message in messages:
                self._dispatch(message)
        except Exception as error:  # a bug here must not leave every stream waiting for ever
            logger.exception("routing the engine's outputs failed")
            self._stop_listening()
            self._died(EngineDeadError(f"routing the engine's outputs failed: {error}"))

    def _dispatch(self, message: object) -> None:
        if isinstance(message, StepOutputs):
            if message.stats is not None:
                self.last_stats = message.stats
            for core_output in message.outputs:
                stream = self._streams.get(core_output.request_id)
                if stream is None:
                    continue  # aborted by its caller; the core has freed it
                state, queue = stream
                output, stopped_by_string = state.update(core_output)
                if stopped_by_string:
                    self.client.send(Abort([core_output.request_id]))
                if output.delta_token_ids or output.delta_text or output.finished:
                    queue.put_nowait(_snapshot(output))
        elif isinstance(message, RequestError):
            stream = self._streams.get(message.request_id)
            if stream is not None:
                stream[1].put_nowait(ValueError(message.message))
        elif isinstance(message, UtilityResult):
            future = self._calls.pop(message.call_id, None)
            if future is not None and not future.done():
                if message.error:
                    future.set_exception(ValueError(message.error))
                else:
                    future.set_result(message.result)

    def _died(self, error: EngineDeadError) -> None:
        """Fail every open stream and call, then tell whoever asked (the server decides what next)."""
        self.dead_error = error
        for _, queue in self._streams.values():
            queue.put_nowait(error)
        for future in self._calls.values():
            if not future.done():
                future.set_exception(error)
        self._calls.clear()
        for callback in self._death_callbacks:
            callback(error)

    def on_death(self, callback: Callable[[EngineDeadError], None]) -> None:
        """Call `callback(error)` on the event loop when the core dies."""
        self._death_callbacks.append(callback)

    def _raise_if_dead(self) -> None:
        if self.dead_error is not None:
            raise self.dead_error

    # ---- lifecycle ---------------------------------------------------------------------

    async def restart(self) -> None:
        """Start a new core in place of a dead one; requests fail with EngineDeadError until it is ready.

        Raises EngineDeadError if the new core fails to start (the old error stays in place).
        """
        if self.dead_error is None:  # a live core has streams that a restart would strand
            raise RuntimeError("restart() replaces a dead engine core; this one is alive")
        self._stop_listening()
        await self.client.aclose(timeout_s=1.0)
        await self._start_core()

    def _stop_listening(self) -> None:
        self.client.stop_listening()
        self._listening = False

    async def shutdown(self) -> None:
        self._stop_listening()
        await self.client.aclose()


def _snapshot(output: RequestOutput) -> RequestOutput:
    """A copy the consumer can keep while the state goes on growing."""
    return dataclasses.replace(
        output, token_ids=list(output.token_ids), delta_token_ids=list(output.delta_token_ids),
        logprobs=list(output.logprobs),
    )  # fmt: skip


def _serving_options(model: str | Path, engine_options: dict[str, Any]) -> EngineOptions:
    return EngineOptions(model=model, **{"omp_spin_count": SERVING_OMP_SPIN_COUNT, **engine_options})
