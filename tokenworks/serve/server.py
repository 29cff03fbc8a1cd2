"""uvicorn's server, with the three ways a tokenworks server ends.

- A signal (SIGTERM, or Ctrl-C): the app is marked draining (503 for new requests) before
  uvicorn's graceful shutdown lets the requests in flight finish; a drained SIGTERM exits 0.
- The app asks: when its engine core died and is not to be restarted, the app sets
  `ServerState.exit_code`; within a tick (0.1 s) the server shuts down as on SIGTERM, and
  `exit_code` tells the caller what to exit with.
- Its parent is gone: a worker of `tokenworks serve --workers N` (router/fleet.py) gets its
  parent's pid in TOKENWORKS_PARENT_PID and shuts down as on SIGTERM when that process is no
  longer its parent, so a fleet killed with SIGKILL leaves no server holding cores and a port.

It serves on the port uvicorn binds, or on a socket already listening: one the fleet bound before
starting its workers, or one inherited from a supervisor (`--fd`) that keeps its port across
restarts, so that no other process can take the port in between.
"""

from __future__ import annotations

import logging
import os
import signal
import socket

import uvicorn

from tokenworks.errors import TokenworksError

logger = logging.getLogger(__name__)

PARENT_PID_VARIABLE = "TOKENWORKS_PARENT_PID"


class Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.parent_pid = int(os.environ.get(PARENT_PID_VARIABLE) or 0) or None

    def _state(self):
        app_state = getattr(self.config.app, "state", None)
        return getattr(app_state, "server", None)

    @property
    def exit_code(self) -> int | None:
        """Non-zero when the app asked to stop because it cannot serve (its engine is gone)."""
        state = self._state()
        return None if state is None else state.exit_code

    def handle_exit(self, sig, frame) -> None:
        state = self._state()
        if state is not None:
            state.draining = True
        super().handle_exit(sig, frame)
        if sig == signal.SIGTERM:  # a drained SIGTERM is a clean exit (0), not death by signal
            self._captured_signals = [s for s in self._captured_signals if s != signal.SIGTERM]

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if sockets and self.started:  # uvicorn says where it listens only for the sockets it bound
            host, port = sockets[0].getsockname()[:2]
            logging.getLogger("uvicorn.error").info(
                "Uvicorn running on http://%s:%d (Press CTRL+C to quit)", host, port
            )

    async def on_tick(self, counter: int) -> bool:
        if self.exit_code is not None:
            return True
        if self.parent_pid is not None and os.getppid() != self.parent_pid:
            logger.warning("the process that started this server (pid %d) is gone: stopping", self.parent_pid)
            self.parent_pid = None  # once: the shutdown below drains as on SIGTERM
            self.handle_exit(signal.SIGTERM, None)
        return await super().on_tick(counter)


def listening_socket(host: str, port: int) -> socket.socket:
    """host:port bound and listening, as uvicorn binds it (SO_REUSEADDR: a server started again on
    its port need not wait for the last one's connections to leave TIME_WAIT)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
    except OSError as error:
        listener.close()
        raise TokenworksError(
            f"cannot listen on {host}:{port} ({error.strerror}): stop what holds the port, or choose another with --port"
        ) from None
    listener.listen(2048)  # uvicorn's default backlog
    return listener


def inherited_socket(fd: int) -> socket.socket:
    """The listening socket a parent passed down as file descriptor `fd` (`tokenworks serve --fd`)."""
    try:
        listener = socket.socket(fileno=fd)
    except OSError as error:
        raise TokenworksError(f"--fd {fd} is not a socket this process inherited ({error.strerror})") from None
    if listener.type != socket.SOCK_STREAM or listener.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 0:
        listener.detach()
        raise TokenworksError(f"--fd {fd} is not a listening TCP socket")
    return listener
