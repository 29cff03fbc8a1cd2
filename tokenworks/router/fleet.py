"""`tokenworks serve MODEL --workers N`: N servers of one model as processes, for a router in front.

Each worker is `python -m tokenworks serve MODEL` on 127.0.0.1 and a port of its own, with its
share of the threads (and, where the machine has enough, its own cores: two engines computing
on the same cores slow each other more than one engine with half the threads), publishing its
KV events for the router's `kv` policy on ports of its own. The fleet binds each worker's port
and hands it the listening socket (`serve --fd`): a port merely found free could be taken by any
other socket (an outgoing connection's included) in the seconds before the worker binds it, and
the worker would exit. The fleet waits until every worker answers /health, and stops them all
(SIGTERM: each drains, then its engine stops) when the router stops; a worker whose fleet was
killed outright stops by itself once it has started. A SIGTERM while they start stops them, as
Ctrl-C does: loading a big model takes minutes, which they would otherwise spend holding their
cores for nothing; a worker still starting has nothing to drain, so it gets a few seconds to
stop before it is killed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field

from tokenworks.errors import TokenworksError
from tokenworks.serve.server import PARENT_PID_VARIABLE, listening_socket

logger = logging.getLogger(__name__)

START_TIMEOUT_S = 600.0  # loading a big checkpoint on a slow disk takes a while
STOP_TIMEOUT_S = 40.0  # a worker's own drain (30 s by default) and its engine's stop
# A worker that has not answered /health yet stops only once its engine is up (uvicorn waits for
# the app's startup); it has no request to drain, and its engine core stops by itself once it
# finds its parent gone (engine/core_process.py).
STARTING_STOP_TIMEOUT_S = 5.0
# Every worker publishes its KV events (and keeps them for replay) on ports of its own, which the
# router finds by asking it (GET /kv_events).
KV_EVENTS_CONFIG = json.dumps(
    {"enable_kv_cache_events": True, "endpoint": "tcp://127.0.0.1:*", "replay_endpoint": "tcp://127.0.0.1:*"}
)


@dataclass
class Fleet:
    model: str
    count: int
    threads: int  # in all; each worker gets threads // count (at least 1)
    extra: list[str] = field(default_factory=list)  # the serve options every worker gets
    processes: list[subprocess.Popen] = field(default_factory=list)
    urls: list[str] = field(default_factory=list)
    cores: list[list[int]] = field(default_factory=list)
    started: set[int] = field(default_factory=set)  # the workers that answered /health
    interrupted: bool = False  # SIGTERM or Ctrl-C came while they started (see _stopped_if_interrupted)

    @property
    def threads_each(self) -> int:
        return max(1, self.threads // self.count)

    def start(self) -> None:
        available = sorted(os.sched_getaffinity(0))
        each = self.threads_each
        pin = len(available) >= each * self.count
        with _stopped_if_interrupted(self):
            for index in range(self.count):
                self._raise_if_interrupted()
                cores = available[index * each : (index + 1) * each] if pin else []
                with listening_socket("127.0.0.1", 0) as listener:  # the worker's copy stays open
                    port, fd = listener.getsockname()[1], listener.fileno()
                    command = [
                        sys.executable, "-m", "tokenworks", "serve", self.model, "--fd", str(fd),
                        "--threads", str(each), "--kv-events-config", KV_EVENTS_CONFIG, *self.extra,
                    ]  # fmt: skip
                    setup = (lambda cores=cores: os.sched_setaffinity(0, cores)) if cores else None
                    # A worker stops when this process is gone, even killed with SIGKILL (serve/server.py).
                    env = {**os.environ, PARENT_PID_VARIABLE: str(os.getpid())}
                    process = subprocess.Popen(
                        command, stdin=subprocess.DEVNULL, preexec_fn=setup, env=env, pass_fds=(fd,)
                    )
                self.processes.append(process)
                self.urls.append(f"http://127.0.0.1:{port}")
                self.cores.append(cores)
            self._wait_healthy()

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        waiting = set(range(self.count))
        while waiting:
            self._raise_if_interrupted()
            for index in sorted(waiting):
                code = self.processes[index].poll()
                if code is not None:
                    raise TokenworksError(f"worker {index} ({self.urls[index]}) exited while starting (code {code})")
                if _healthy(self.urls[index]):
                    waiting.discard(index)
                    self.started.add(index)
            if time.monotonic() > deadline:
                raise TokenworksError(f"{len(waiting)} workers did not start within {START_TIMEOUT_S:.0f} s")
            time.sleep(0.1)

    def _raise_if_interrupted(self) -> None:
        if self.interrupted:
            raise KeyboardInterrupt

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        now = time.monotonic()
        for index, process in enumerate(self.processes):
            deadline = now + (STOP_TIMEOUT_S if index in self.started else STARTING_STOP_TIMEOUT_S)
            try:
                process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def describe(self) -> str:
        threads = f"{self.threads_each} thread{'s' * (self.threads_each != 1)}"
        lines = [f"{self.count} workers x {threads} each"]
        for url, cores in zip(self.urls, self.cores, strict=True):
            lines.append(f"  {url}" + (f" on cores {','.join(map(str, cores))}" if cores else ""))
        return "\n".join(lines)


@contextlib.contextmanager
def _stopped_if_interrupted(fleet: Fleet) -> Iterator[None]:
    """Stop the fleet's workers when anything (an error, Ctrl-C, SIGTERM) ends its start.

    While it lasts, SIGTERM and SIGINT only mark the fleet interrupted, and the start raises
    KeyboardInterrupt at its next check (between workers, and every 0.1 s while they load).
    Python's default would end this process on the spot at SIGTERM, leaving them loading, and
    raise at Ctrl-C wherever it was, in the middle of starting a worker not yet in the list to
    stop. (Signal handlers are the main thread's: elsewhere, the signals are left as they are.)"""
    in_main_thread = threading.current_thread() is threading.main_thread()

    def interrupt(signum: int, frame: object) -> None:
        fleet.interrupted = True

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGINT)} if in_main_thread else {}
    try:
        yield
    except BaseException:
        fleet.stop()
        raise
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _healthy(url: str) -> bool:
    with (
        contextlib.suppress(urllib.error.URLError, OSError),
        urllib.request.urlopen(f"{url}/health", timeout=1.0) as answer,
    ):
        return answer.status == 200
    return False
