"""The caller's side of the engine: starts the core process and talks to it.

`EngineCoreClient` owns the process and the sockets; `LLM` (offline, blocking) and
`AsyncLLM` (asyncio, for the server) build on it. If the core dies, every request still
waiting gets an `EngineDeadError` instead of hanging.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import pickle
import tempfile
from collections.abc import Iterator
from pathlib import Path

import zmq

from tokenworks.engine.core_process import handle_message, run_engine_core
from tokenworks.engine.messages import Fatal, Ready, Shutdown, StepOutputs
from tokenworks.engine.options import EngineOptions
from tokenworks.errors import TokenworksError

logger = logging.getLogger(__name__)

STARTUP_TIMEOUT_S = 600.0  # loading a big checkpoint on a slow disk takes a while


class EngineDeadError(TokenworksError):
    """The engine-core process is gone; requests in flight cannot complete."""


class EngineCoreClient:
    """Starts the engine core in a fresh process and exchanges pickled messages with it."""

    def __init__(self, options: EngineOptions, context: zmq.Context | None = None) -> None:
        options.validate()
        self._socket_dir = tempfile.TemporaryDirectory(prefix="tokenworks-engine-")
        base = Path(self._socket_dir.name)
        self.input_address = f"ipc://{base / 'input'}"
        self.output_address = f"ipc://{base / 'output'}"
        self.context = context or zmq.Context.instance()
        self.input_socket = self.context.socket(zmq.PUSH)
        self.input_socket.bind(self.input_address)
        self.output_socket = self.context.socket(zmq.PULL)
        self.output_socket.bind(self.output_address)
        # spawn: the core starts clean, never inheriting this process's threads or CUDA state.
        spawn = multiprocessing.get_context("spawn")
        # OpenMP threads that spin while waiting take the CPU from the thread they wait for
        # whenever the machine has other work (the HTTP process, a laptop's other programs):
        # 2-thread decoding ran 13x slower than 1-thread under load. Passive waiting sleeps
        # instead. The child reads the variable at start; a user's own setting wins.
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        self.process = spawn.Process(
            target=run_engine_core,
            args=(options, self.input_address, self.output_address, logging.getLogger().level),
            name="tokenworks-engine-core",
            daemon=True,
        )
        spin = {} if options.omp_spin_count is None else {"GOMP_SPINCOUNT": str(options.omp_spin_count)}
        with _environment(spin):  # the child's OpenMP reads it when torch loads there
            self.process.start()
        self.ready = self._wait_ready()
        self.dead_reason: str | None = None

    def _wait_ready(self) -> Ready:
        waited = 0.0
        while waited < STARTUP_TIMEOUT_S:
            if self.output_socket.poll(500):
                message = pickle.loads(self.output_socket.recv())
                if isinstance(message, Ready):
                    return message
                if isinstance(message, Fatal):
                    self.close()
                    raise EngineDeadError(f"the engine failed to start: {message.message}")
            elif not self.process.is_alive():
                self.close()
                raise EngineDeadError(f"the engine process exited during startup (code {self.process.exitcode})")
            waited += 0.5
        self.close()
        raise EngineDeadError(f"the engine did not start within {STARTUP_TIMEOUT_S:.0f} s")

    def send(self, message: object) -> None:
        self.input_socket.send(pickle.dumps(message, pickle.HIGHEST_PROTOCOL))

    def receive(self, timeout_ms: int) -> object | None:
        """The next message from the core, or None after the timeout; raises if the core died."""
        if self.output_socket.poll(timeout_ms):
            message = pickle.loads(self.output_socket.recv())
            if isinstance(message, Fatal):
                self.dead_reason = message.message
                logger.error("engine core failed: %s\n%s", message.message, message.details)
                raise EngineDeadError(f"the engine core failed: {message.message}")
            return message
        self.check_alive()
        return None

    def check_alive(self) -> None:
        if not self.process.is_alive():
            self.dead_reason = self.dead_reason or f"the engine core process exited (code {self.process.exitcode})"
            raise EngineDeadError(self.dead_reason)

    def close(self) -> None:
        if getattr(self, "process", None) is not None and self.process.is_alive():
            with contextlib.suppress(zmq.ZMQError):
                self.send(Shutdown())
            self.process.join(timeout=10)
            if self.process.is_alive():
                self.process.kill()
                self.process.join(timeout=5)
        for sock in (self.input_socket, self.output_socket):
            sock.close(linger=0)
        self._socket_dir.cleanup()


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables for a child started inside the block; restore them after."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class InProcessCoreClient:
    """The same conversation with an `EngineCore` in this process: for tests and debugging,
    where a second process would only cost start-up time."""

    def __init__(self, options: EngineOptions) -> None:
        from tokenworks.engine.core import EngineCore

        self.core = EngineCore(options)
        core = self.core
        self.ready = Ready(
            core.max_model_len, core.model.config.vocab_size, sorted(core.eos_token_ids),
            core.kv_cache.pool.num_blocks, core.kv_cache.block_size, str(core.model.device),
        )  # fmt: skip
        self._pending: list[object] = []
        self.dead_reason: str | None = None

    def send(self, message: object) -> None:
        handle_message(self.core, message, self._pending.append)

    def receive(self, timeout_ms: int) -> object | None:
        if self._pending:
            return self._pending.pop(0)
        if self.core.has_work():
            return StepOutputs(self.core.step(), self.core.last_stats)
        return None

    def check_alive(self) -> None:
        return None

    def close(self) -> None:
        self._pending.clear()
