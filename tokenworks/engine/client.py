"""The caller's side of the engine: starts the core process and talks to it.

`EngineCoreClient` owns the process and its socket (channel.py); `LLM` (offline, blocking)
and `AsyncLLM` (asyncio, for the server) build on it. The core is a fresh interpreter running
`python -m tokenworks.engine.core_process`, so it never re-imports the caller's `__main__`
(which is what multiprocessing's spawn does, and what breaks scripts without a main guard,
`python -`, and notebooks). Nothing here blocks on the core: a send never waits (what the
socket cannot take yet stays queued), and a core that dies closes its end of the socket, so
every request still waiting gets an `EngineDeadError` at once instead of hanging.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import site
import socket
import subprocess
import sys
import time
import weakref
from collections import deque
from collections.abc import Callable
from pathlib import Path

from tokenworks.engine.channel import Channel, ChannelClosed
from tokenworks.engine.messages import Fatal, Ready, Shutdown, StartEngine
from tokenworks.engine.options import EngineOptions
from tokenworks.errors import TokenworksError

logger = logging.getLogger(__name__)

STARTUP_TIMEOUT_S = 600.0  # loading a big checkpoint on a slow disk takes a while
WATCH_INTERVAL_MS = 100  # how long a blocking caller waits for messages before looking again
SHUTDOWN_TIMEOUT_S = 10.0
_EXIT_CODE_WAIT_S = 0.5  # a core whose socket closed exits within this; its exit code says why


class EngineDeadError(TokenworksError):
    """The engine-core process is gone; requests in flight cannot complete."""


class EngineCoreClient:
    """Starts the engine core in a fresh interpreter and exchanges pickled messages with it.

    The constructor returns as soon as the process is launched; `wait_ready` (blocking) or
    `wait_ready_async` (asyncio) waits until the model is loaded. A blocking caller reads with
    `receive`; an event loop has the messages delivered as they arrive (`listen`).
    """

    def __init__(self, options: EngineOptions) -> None:
        options.validate()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-P", "-m", "tokenworks.engine.core_process", str(theirs.fileno())],
                env=core_environment(options),
                stdin=subprocess.DEVNULL,
                pass_fds=(theirs.fileno(),),
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()  # the core's copy is the only one left: its exit closes the line
        self.channel = Channel(ours)
        self._inbox: deque[object] = deque()
        self._loop: asyncio.AbstractEventLoop | None = None  # while listening
        self._writing = False  # the loop is waiting to write queued output
        # An LLM the caller never shut down still stops its core: when it is collected, or at exit.
        self._finalizer = weakref.finalize(self, _stop_process, self.process)
        self.dead_reason: str | None = None
        self._ready = False
        self.send(StartEngine(options, logging.getLogger().level, os.getpid()))

    # ---- start-up ----------------------------------------------------------------------

    def wait_ready(self, timeout_s: float = STARTUP_TIMEOUT_S) -> Ready:
        """Block until the core has loaded the model; EngineDeadError if it fails or dies first."""
        deadline = time.monotonic() + timeout_s
        try:
            while time.monotonic() < deadline:
                message = self.receive(WATCH_INTERVAL_MS)
                ready = self._startup_reply(message) if message is not None else None
                if ready is not None:
                    return ready
            raise EngineDeadError(f"the engine did not start within {timeout_s:.0f} s")
        except BaseException:  # a failed start, or the caller interrupted it: nothing stays behind
            self._release()
            raise

    async def wait_ready_async(self, timeout_s: float = STARTUP_TIMEOUT_S) -> Ready:
        """`wait_ready` for an event loop, which stays free to serve while the model loads."""
        reply: asyncio.Future[Ready] = asyncio.get_running_loop().create_future()

        def on_messages(messages: list[object]) -> None:
            for message in messages:
                if reply.done():
                    return
                try:
                    ready = self._startup_reply(message)
                except EngineDeadError as error:
                    reply.set_exception(error)
                else:
                    if ready is not None:
                        reply.set_result(ready)

        def on_death(error: EngineDeadError) -> None:
            if not reply.done():
                reply.set_exception(error)

        self.listen(on_messages, on_death)
        try:
            return await asyncio.wait_for(reply, timeout_s)
        except TimeoutError:
            self._release()
            raise EngineDeadError(f"the engine did not start within {timeout_s:.0f} s") from None
        except BaseException:  # a failed start, or a cancelled one: nothing stays behind
            self._release()
            raise
        finally:
            self.stop_listening()

    def _startup_reply(self, message: object) -> Ready | None:
        if isinstance(message, Ready):
            self._ready = True
            return message
        if isinstance(message, Fatal):
            details = f"\n{message.details}" if message.details else ""  # none when it refused what it was given
            logger.error("engine core failed to start: %s%s", message.message, details)
            raise EngineDeadError(f"the engine failed to start: {message.message}")
        return None

    # ---- messages ----------------------------------------------------------------------

    def send(self, message: object) -> None:
        try:
            self.channel.send(message)
        except (ChannelClosed, OSError) as error:  # OSError: our own end is closed already
            raise EngineDeadError(self._death_reason(f"cannot reach the engine core: {error}")) from None
        if self.channel.has_pending_output and self._loop is not None and not self._writing:
            self._writing = True
            self._loop.add_writer(self.channel.fileno(), self._write_for_loop)

    def receive(self, timeout_ms: int) -> object | None:
        """The next message from the core, or None after the timeout; raises if the core died."""
        if not self._inbox:
            try:
                self._inbox.extend(self.channel.receive(timeout_ms / 1000))
            except ChannelClosed:
                with contextlib.suppress(subprocess.TimeoutExpired):  # for its exit code, as listen does
                    self.process.wait(_EXIT_CODE_WAIT_S)
                raise EngineDeadError(self._death_reason()) from None
        if not self._inbox:
            return None
        message = self._inbox.popleft()
        self._raise_if_fatal(message)
        return message

    def listen(self, on_messages: Callable[[list[object]], None], on_death: Callable[[EngineDeadError], None]) -> None:
        """Hand the core's messages to `on_messages` on the running event loop as they arrive, and
        a dead core's error to `on_death` (once), until `stop_listening`."""
        loop = asyncio.get_running_loop()

        def readable() -> None:
            try:
                messages = self.channel.read_available()
                for message in messages:
                    self._raise_if_fatal(message)
            except ChannelClosed:
                self.stop_listening()
                report_death(time.monotonic() + _EXIT_CODE_WAIT_S)
            except EngineDeadError as fatal:
                self.stop_listening()
                on_death(fatal)
            else:
                on_messages(messages)

        def report_death(give_up_at: float) -> None:
            # The kernel closes a dying process's socket a moment before its exit code can be
            # read: look again shortly (never blocking the loop) for an error that says more.
            if self.process.poll() is None and time.monotonic() < give_up_at:
                loop.call_later(0.005, report_death, give_up_at)
            else:
                on_death(EngineDeadError(self._death_reason()))

        self._loop = loop
        loop.add_reader(self.channel.fileno(), readable)
        if self.channel.has_pending_output and not self._writing:
            self._writing = True
            loop.add_writer(self.channel.fileno(), self._write_for_loop)

    def stop_listening(self) -> None:
        if self._loop is not None and self.channel.sock.fileno() != -1:
            self._loop.remove_reader(self.channel.fileno())
            if self._writing:
                self._loop.remove_writer(self.channel.fileno())
        self._loop, self._writing = None, False

    def _write_for_loop(self) -> None:
        try:
            done = self.channel.flush()
        except ChannelClosed:
            done = True  # the reader hears of it
        if done and self._loop is not None:
            self._loop.remove_writer(self.channel.fileno())
            self._writing = False

    def _raise_if_fatal(self, message: object) -> None:
        if isinstance(message, Fatal):
            self.dead_reason = f"the engine core failed: {message.message}"
            logger.error("engine core failed: %s\n%s", message.message, message.details)
            raise EngineDeadError(self.dead_reason)

    def _death_reason(self, fallback: str | None = None) -> str:
        """Why the line went quiet: the core's last words, else its exit code (it is already
        gone or going when its end of the socket closes; this never waits for it)."""
        if self.dead_reason is None:
            code = self.process.poll()
            if code is not None:
                what = "core process exited" if self._ready else "process exited during startup"
                self.dead_reason = f"the engine {what} (code {code})"
            else:
                self.dead_reason = fallback or "the engine core closed its connection"
        return self.dead_reason

    # ---- shutdown ----------------------------------------------------------------------

    def close(self, timeout_s: float = SHUTDOWN_TIMEOUT_S) -> None:
        """Ask the core to stop, wait for it (killing it after `timeout_s`), release the socket."""
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
            self.channel.flush()  # a core that reads nothing any more is killed after the timeout
        except (EngineDeadError, ChannelClosed):
            self._kill()
            return False
        return True

    def _kill(self) -> None:
        self._finalizer()  # kills it if it still runs, reaps it, and runs only once

    def _release(self) -> None:
        self.stop_listening()
        self._kill()
        self.channel.close()


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
    # instead, and `LLM`, whose caller only waits, asks for a spin count. OpenMP reads both
    # once, at start; the steps of a few rows, where spinning matters most, run on the
    # kernels' own threads, which the engine tells how to wait step by step
    # (kernels/thread_pool.h). A user's own setting wins.
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
