"""The caller's side of the engine: starts the core process and talks to it.

`EngineCoreClient` owns the process and the sockets; `LLM` (offline, blocking) and
`AsyncLLM` (asyncio, for the server) build on it. The core is a fresh interpreter running
`python -m tokenworks.engine.core_process`, so it never re-imports the caller's `__main__`
(which is what multiprocessing's spawn does, and what breaks scripts without a main guard,
`python -`, and notebooks). Nothing here blocks on the core: a send never waits (the socket
queues), and whoever waits for an answer also watches the process, so if the core dies
every request still waiting gets an `EngineDeadError` instead of hanging.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pickle
import site
import subprocess
import sys
import tempfile
import time
import weakref
from pathlib import Path

import zmq
import zmq.asyncio

from tokenworks.engine.messages import Fatal, Ready, Shutdown, StartEngine
from tokenworks.engine.options import EngineOptions
from tokenworks.errors import TokenworksError

logger = logging.getLogger(__name__)

STARTUP_TIMEOUT_S = 600.0  # loading a big checkpoint on a slow disk takes a while
WATCH_INTERVAL_MS = 100  # how often a waiting caller checks that the core is alive
SHUTDOWN_TIMEOUT_S = 10.0


class EngineDeadError(TokenworksError):
    """The engine-core process is gone; requests in flight cannot complete."""


class EngineCoreClient:
    """Starts the engine core in a fresh interpreter and exchanges pickled messages with it.

    The constructor returns as soon as the process is launched; `wait_ready` (blocking) or
    `wait_ready_async` (asyncio) waits until the model is loaded.
    """

    def __init__(self, options: EngineOptions, for_event_loop: bool = False) -> None:
        options.validate()
        self._socket_dir = tempfile.TemporaryDirectory(prefix="tokenworks-engine-")
        base = Path(self._socket_dir.name)
        self.input_address = f"ipc://{base / 'input'}"  # the core binds it
        self.output_address = f"ipc://{base / 'output'}"  # we bind it
        self.context = zmq.Context.instance()
        # For an event loop the asyncio socket owns the outputs and `output_socket` is a view of
        # it: closing the asyncio socket is what takes its file descriptor off the loop, and a
        # descriptor left there after its socket closed silences whatever opens under its number
        # next (an HTTP connection, say).
        self._async_outputs: zmq.asyncio.Socket | None = None
        if for_event_loop:
            self._async_outputs = self.context.socket(zmq.PULL, socket_class=zmq.asyncio.Socket)
            self.output_socket = zmq.Socket.shadow(self._async_outputs.underlying)
        else:
            self.output_socket = self.context.socket(zmq.PULL)
        self.output_socket.bind(self.output_address)
        # The connecting side of a PUSH queues messages whether or not its peer is there, and
        # with no high-water mark a send never blocks: not before the core has bound its
        # socket, and not after it died (the watch on the process notices that).
        self.input_socket = self.context.socket(zmq.PUSH)
        self.input_socket.setsockopt(zmq.SNDHWM, 0)
        self.input_socket.connect(self.input_address)
        self.process = subprocess.Popen(
            [sys.executable, "-P", "-m", "tokenworks.engine.core_process", self.input_address, self.output_address],
            env=core_environment(options),
            stdin=subprocess.DEVNULL,
        )
        # An LLM the caller never shut down still stops its core: when it is collected, or at exit.
        self._finalizer = weakref.finalize(self, _stop_process, self.process)
        self.send(StartEngine(options, logging.getLogger().level, os.getpid()))
        self.dead_reason: str | None = None

    # ---- start-up ----------------------------------------------------------------------

    def wait_ready(self, timeout_s: float = STARTUP_TIMEOUT_S) -> Ready:
        """Block until the core has loaded the model; EngineDeadError if it fails or dies first."""
        deadline = time.monotonic() + timeout_s
        try:
            while time.monotonic() < deadline:
                if self.output_socket.poll(WATCH_INTERVAL_MS):
                    ready = self._startup_reply(pickle.loads(self.output_socket.recv()))
                    if ready is not None:
                        return ready
                else:
                    self._check_starting()
            raise EngineDeadError(f"the engine did not start within {timeout_s:.0f} s")
        except BaseException:  # a failed start, or the caller interrupted it: nothing stays behind
            self._release()
            raise

    async def wait_ready_async(self, timeout_s: float = STARTUP_TIMEOUT_S) -> Ready:
        """`wait_ready` for an event loop, which stays free to serve while the model loads."""
        outputs = self.async_outputs()
        deadline = time.monotonic() + timeout_s
        try:
            while time.monotonic() < deadline:
                if await outputs.poll(WATCH_INTERVAL_MS):
                    ready = self._startup_reply(pickle.loads(await outputs.recv()))
                    if ready is not None:
                        return ready
                else:
                    self._check_starting()
            raise EngineDeadError(f"the engine did not start within {timeout_s:.0f} s")
        except BaseException:  # a failed start, or a cancelled one: nothing stays behind
            self._release()
            raise

    def _startup_reply(self, message: object) -> Ready | None:
        if isinstance(message, Ready):
            return message
        if isinstance(message, Fatal):
            logger.error("engine core failed to start: %s\n%s", message.message, message.details)
            raise EngineDeadError(f"the engine failed to start: {message.message}")
        return None

    def _check_starting(self) -> None:
        code = self.process.poll()
        if code is not None:
            raise EngineDeadError(f"the engine process exited during startup (code {code})")

    # ---- messages ----------------------------------------------------------------------

    def send(self, message: object) -> None:
        try:
            self.input_socket.send(pickle.dumps(message, pickle.HIGHEST_PROTOCOL), zmq.NOBLOCK)
        except zmq.ZMQError as error:  # a closed socket; never a full one (no high-water mark)
            raise EngineDeadError(f"cannot reach the engine core: {error}") from None

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

    def async_outputs(self) -> zmq.asyncio.Socket:
        """The output socket for an event loop (a client made with for_event_loop=True)."""
        if self._async_outputs is None:
            raise RuntimeError("this engine client was not made for an event loop")
        return self._async_outputs

    def check_alive(self) -> None:
        code = self.process.poll()
        if code is not None:
            self.dead_reason = self.dead_reason or f"the engine core process exited (code {code})"
            raise EngineDeadError(self.dead_reason)

    # ---- shutdown ----------------------------------------------------------------------

    def close(self, timeout_s: float = SHUTDOWN_TIMEOUT_S) -> None:
        """Ask the core to stop, wait for it (killing it after `timeout_s`), release the sockets."""
        if self._ask_to_stop():
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self._kill()
        self._release()

    async def aclose(self, timeout_s: float = SHUTDOWN_TIMEOUT_S) -> None:
        """`close` for an event loop: it waits by polling, never blocking the loop."""
        if self._ask_to_stop():
            deadline = time.monotonic() + timeout_s
            while self.process.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            if self.process.poll() is None:
                self._kill()
        self._release()

    def _ask_to_stop(self) -> bool:
        if self.process.poll() is not None:
            return False
        try:
            self.send(Shutdown())
        except EngineDeadError:
            self._kill()
            return False
        return True

    def _kill(self) -> None:
        self._finalizer()  # kills it if it still runs, reaps it, and runs only once

    def _release(self) -> None:
        self._kill()
        self.input_socket.close(linger=0)
        (self._async_outputs or self.output_socket).close(linger=0)  # the owner; never a view
        self._socket_dir.cleanup()


def _stop_process(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.kill()
    # SIGKILL takes effect at once; the wait only reaps the process (no zombie left behind).
    try:
        process.wait(5)
    except subprocess.TimeoutExpired:
        logger.warning("engine core %d did not exit after SIGKILL", process.pid)


def core_environment(options: EngineOptions) -> dict[str, str]:
    """The core's environment: the caller's, plus OpenMP's waiting policy and the package's path."""
    env = dict(os.environ)
    # OpenMP threads that spin while waiting take the CPU from the thread they wait for
    # whenever the machine has other work (the HTTP process, a laptop's other programs):
    # 2-thread decoding ran 13x slower than 1-thread under load. Passive waiting sleeps
    # instead. A user's own setting wins.
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if options.omp_spin_count is not None:
        env["GOMP_SPINCOUNT"] = str(options.omp_spin_count)
    # A caller may import tokenworks from a source tree it put on sys.path itself; the core,
    # a fresh interpreter, finds the same package through PYTHONPATH (an installed one needs nothing).
    root = str(Path(__file__).resolve().parents[2])
    installed = {*site.getsitepackages(), site.getusersitepackages()}
    if root not in installed:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    return env
