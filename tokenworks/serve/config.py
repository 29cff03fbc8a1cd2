"""What a server is asked to do: which model under which name, where, and its limits."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_MAX_BODY_BYTES = 16 * 2**20  # a 128k-token prompt as JSON token ids is about 1 MiB


@dataclass(slots=True)
class ServerConfig:
    model: str | Path
    served_model_name: str | None = None  # None: the model directory's name
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None  # Bearer token required on /v1/*, /tokenize and /detokenize when set
    max_queued_requests: int = 1024  # requests held beyond the engine's max_num_seqs before 429
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    shutdown_timeout: float = 30.0  # seconds in-flight requests get to finish after SIGTERM
    engine_options: dict[str, Any] = field(default_factory=dict)  # AsyncLLM(model, **engine_options)
    bench_results: Path | None = None  # a `tokenworks bench` output directory: /dashboard shows its frontier.csv
    restart_engine: bool = False  # a dead engine core: False stops the server (exit 1), True starts a new core
    # The request log (tokenworks.flywheel): a SQLite file of every generation request, off when None.
    log_db: Path | None = None
    log_flush_interval: float = 1.0  # seconds between the log's commits: what a kill -9 can lose
    log_retention_days: float | None = None  # None: keep every row
    log_redact_pii: bool = False  # redact e-mail addresses, phone numbers and IPs before writing

    @property
    def engine_start_options(self) -> dict[str, Any]:
        """AsyncLLM's options: engine_options, plus scoring every sampled token when the log needs it."""
        return {**self.engine_options, "score_sampled_tokens": True} if self.log_db else self.engine_options

    @property
    def model_name(self) -> str:
        return self.served_model_name or Path(self.model).resolve().name

    def validate(self) -> None:
        if self.max_queued_requests < 0:
            raise ValueError(f"max_queued_requests must be at least 0, got {self.max_queued_requests}")
        if self.max_body_bytes < 1024:
            raise ValueError(f"max_body_bytes must be at least 1024, got {self.max_body_bytes}")
        if self.shutdown_timeout < 0:
            raise ValueError(f"shutdown_timeout must be at least 0, got {self.shutdown_timeout}")
        if self.log_flush_interval <= 0:
            raise ValueError(f"log_flush_interval must be positive, got {self.log_flush_interval}")
        if self.log_retention_days is not None and self.log_retention_days <= 0:
            raise ValueError(f"log_retention_days must be positive, got {self.log_retention_days}")
