"""The engine core in the caller's own process, behind the same conversation as the client.

For tests and debugging, where a second process would only cost start-up time: `LLM(model,
multiprocess=False)`. The core's messages go to a list instead of a socket.
"""

from __future__ import annotations

from tokenworks.engine.core import EngineCore
from tokenworks.engine.core_process import handle_message, ready_message
from tokenworks.engine.messages import StepOutputs
from tokenworks.engine.options import EngineOptions


class InProcessCoreClient:
    def __init__(self, options: EngineOptions) -> None:
        self.core = EngineCore(options)
        self.ready = ready_message(self.core)
        self._pending: list[object] = []
        self.dead_reason: str | None = None

    def send(self, message: object) -> None:
        handle_message(self.core, message, self._pending.append)

    def receive(self, timeout_ms: int) -> object | None:
        if self._pending:
            return self._pending.pop(0)
        if self.core.has_work():
            outputs = StepOutputs(self.core.step(), self.core.last_stats)
            self.core.publish_kv_events()
            return outputs
        return None

    def close(self) -> None:
        self._pending.clear()
