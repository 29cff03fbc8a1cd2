"""The server's state: its configuration, its engine, and whether it accepts requests now."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from tokenworks.engine import AsyncLLM
from tokenworks.flywheel.writer import LogWriter
from tokenworks.serve.admission import Admission
from tokenworks.serve.config import ServerConfig
from tokenworks.serve.errors import APIError
from tokenworks.serve.metrics import ServerMetrics


@dataclass
class ServerState:
    config: ServerConfig
    engine: AsyncLLM
    metrics: ServerMetrics
    admission: Admission
    request_log: LogWriter | None = None  # --log-db: every generation request goes to it
    created: int = field(default_factory=lambda: int(time.time()))
    draining: bool = False  # shutting down: no new requests
    restarting: bool = False  # the engine died and a new one is starting (--restart-engine)
    exit_code: int | None = None  # set when the server must stop (its engine died): server.py acts on it

    def check_model(self, model: str | None) -> str | None:
        """The LoRA adapter a request's `model` names, None for the base model; 404 for neither."""
        if model is None or model == self.config.model_name:
            return None
        if model in self.engine.loras:
            return model
        served = ", ".join(repr(name) for name in [self.config.model_name, *self.engine.loras])
        raise APIError(
            404, f"the model {model!r} does not exist; this server serves {served}", param="model",
            code="model_not_found",
        )  # fmt: skip

    def unavailable(self) -> APIError | None:
        """Why the server cannot take a request now (a 503), or None when it can."""
        dead = self.engine.dead_error
        if self.restarting:
            return APIError(
                503, f"the engine is restarting after a failure ({dead}); retry shortly",
                code="engine_restarting", headers={"Retry-After": "5"},
            )  # fmt: skip
        if dead is not None:
            return APIError(503, f"the engine is not available: {dead}", code="engine_unavailable")
        if self.draining:
            return APIError(503, "the server is shutting down and accepts no new requests", code="shutting_down")
        return None

    def check_open(self) -> None:
        error = self.unavailable()
        if error is not None:
            raise error
