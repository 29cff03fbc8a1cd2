"""`tokenworks serve MODEL_DIR`: the OpenAI-compatible server on uvicorn.

SIGTERM (or Ctrl-C): the listening socket closes and new requests are refused with 503,
requests in flight get `--shutdown-timeout` seconds to finish, then the engine process
is shut down and the command exits 0. If the engine process dies, open streams end with
an error event and requests get 503 at once; the command then exits 1, or with
`--restart-engine` starts a new engine process and serves again (supervisor.py).
"""

from __future__ import annotations

import socket
from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)


def serve(
    ctx: typer.Context,
    model: Path = typer.Argument(..., help="A checkpoint directory (config.json, safetensors, tokenizer.json)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind; 0.0.0.0 exposes the server."),
    port: int = typer.Option(8000, "--port", min=0, max=65535, help="Port to bind."),
    fd: int = typer.Option(
        None,
        "--fd",
        min=0,
        help="Serve on this listening socket, inherited from the parent (its file descriptor), "
        "instead of binding --host/--port, so that a supervisor keeps its port across restarts.",
    ),
    api_key: str = typer.Option(
        None, "--api-key", envvar="TOKENWORKS_API_KEY", help="Require 'Authorization: Bearer KEY' on /v1/*."
    ),
    served_model_name: str = typer.Option(
        None, "--served-model-name", help="Model name in the API; default: the directory's name."
    ),
    threads: int = typer.Option(None, "--threads", min=1, help="Torch threads in the engine process."),
    kv_cache_memory_gib: float = typer.Option(
        None, "--kv-cache-memory-gib", help="KV cache size; default: a share of free memory."
    ),
    max_num_batched_tokens: int = typer.Option(2048, "--max-num-batched-tokens", min=1, help="Tokens per engine step."),
    max_num_seqs: int = typer.Option(256, "--max-num-seqs", min=1, help="Requests in one batch at most."),
    max_model_len: int = typer.Option(None, "--max-model-len", min=2, help="Context length; default: the model's."),
    block_size: int = typer.Option(
        None, "--block-size", min=1, help="Tokens per KV cache block; default: 128 on CPU (as vLLM's), 16 on CUDA."
    ),
    no_prefix_caching: bool = typer.Option(False, "--no-enable-prefix-caching", help="Turn prefix caching off."),
    no_pack_weights: bool = typer.Option(
        False, "--no-pack-weights", help="CPU: one copy of the weights, without oneDNN's packed one (slower)."
    ),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda[:N]."),
    dtype: str = typer.Option(None, "--dtype", help="float32, bfloat16 or float16; default: the checkpoint's."),
    seed: int = typer.Option(0, "--seed", help="Seed of the engine's sampler."),
    max_queued_requests: int = typer.Option(
        1024, "--max-queued-requests", min=0, help="Requests held beyond --max-num-seqs before answering 429."
    ),
    max_body_bytes: int = typer.Option(16 * 2**20, "--max-body-bytes", min=1024, help="Larger request bodies get 413."),
    shutdown_timeout: float = typer.Option(30.0, "--shutdown-timeout", min=0, help="Seconds to drain on SIGTERM."),
    access_log: bool = typer.Option(False, "--access-log", help="Log every HTTP request."),
    bench_results: Path = typer.Option(
        None, "--bench-results", file_okay=False, help="A `tokenworks bench` output dir; /dashboard shows its frontier."
    ),
    lora_modules: list[str] = typer.Option(
        None, "--lora-modules", help="NAME=PATH of a LoRA adapter (PEFT directory) to serve as NAME; repeat for more."
    ),
    max_loras: int = typer.Option(8, "--max-loras", min=1, help="LoRA adapters held at once (static and loaded)."),
    max_lora_rank: int = typer.Option(64, "--max-lora-rank", min=1, max=512, help="The largest LoRA rank accepted."),
    enable_lora: bool = typer.Option(
        False, "--enable-lora", help="Accepted as vLLM has it; adapters need no switch here.", hidden=True
    ),
    kv_events_config: str = typer.Option(
        None,
        "--kv-events-config",
        help='Publish KV cache events over ZMQ, as vLLM: \'{"enable_kv_cache_events": true, "endpoint": "tcp://*:5557", '
        '"replay_endpoint": "tcp://*:5558"}\' (a port of * takes a free one; GET /kv_events says which).',
    ),
    workers: int = typer.Option(
        1, "--workers", min=1, help="Serve N engine processes behind `tokenworks router` on this port (threads split)."
    ),
    router_policy: str = typer.Option("kv", "--router-policy", help="With --workers: the router's policy."),
    restart_engine: bool = typer.Option(
        False,
        "--restart-engine",
        help="If the engine process dies, start a new one (503 meanwhile) instead of exiting 1.",
    ),
    log_db: Path = typer.Option(
        None,
        "--log-db",
        dir_okay=False,
        help="Log every completion and chat request (payloads, tokens, times, logprobs) to this SQLite file; "
        "POST /v1/feedback rates them. Off by default.",
    ),
    log_flush_interval: float = typer.Option(
        1.0, "--log-flush-interval", min=0.01, help="Seconds between the log's commits: at most what a kill -9 loses."
    ),
    log_retention_days: float = typer.Option(
        None, "--log-retention-days", min=0.0001, help="Delete logged requests older than this (at start, then hourly)."
    ),
    log_redact_pii: bool = typer.Option(
        False, "--log-redact-pii", help="Redact e-mail addresses, phone numbers and IPs in the log (ingest's redactor)."
    ),
) -> None:
    """Serve a model over an OpenAI-compatible HTTP API (completions, chat, streaming, metrics)."""
    import uvicorn

    from tokenworks.errors import CheckpointError
    from tokenworks.serve.app import create_app
    from tokenworks.serve.config import ServerConfig
    from tokenworks.serve.server import Server, inherited_socket

    if not (model / "config.json").is_file():
        raise CheckpointError(f"{model} has no config.json: point at a checkpoint directory")
    del enable_lora  # vLLM needs it to serve adapters; here they need nothing
    if log_db is not None:  # here, before the server starts: its event loop never waits on the disk
        from tokenworks.flywheel.store import check_writable

        check_writable(log_db)
    adapters = lora_modules_of(lora_modules or [])
    kv_events = kv_events_of(kv_events_config)
    listener = inherited_socket(fd) if fd is not None else None
    if workers > 1:
        serve_fleet(ctx, model, workers, threads, host, port, listener, api_key, router_policy, access_log)
        return
    engine_options = dict(
        threads=threads, kv_cache_memory_gib=kv_cache_memory_gib, max_num_batched_tokens=max_num_batched_tokens,
        max_num_seqs=max_num_seqs, max_model_len=max_model_len, block_size=block_size,
        enable_prefix_caching=not no_prefix_caching, pack_weights=not no_pack_weights, device=device, dtype=dtype,
        seed=seed, lora_modules=adapters, max_loras=max_loras, max_lora_rank=max_lora_rank, kv_events=kv_events,
    )  # fmt: skip
    config = ServerConfig(
        model=model, served_model_name=served_model_name, host=host, port=port, api_key=api_key,
        max_queued_requests=max_queued_requests, max_body_bytes=max_body_bytes, shutdown_timeout=shutdown_timeout,
        engine_options=engine_options, bench_results=bench_results, restart_engine=restart_engine,
        log_db=log_db, log_flush_interval=log_flush_interval, log_retention_days=log_retention_days,
        log_redact_pii=log_redact_pii,
    )  # fmt: skip
    if config.model_name in adapters:
        raise typer.BadParameter(f"{config.model_name!r} is the base model's name", param_hint="--lora-modules")
    app = create_app(config)
    server = Server(
        uvicorn.Config(
            app,
            host=host,
            port=port,
            timeout_graceful_shutdown=shutdown_timeout,
            access_log=access_log,
            log_level="info",
            lifespan="on",
        )
    )
    server.run(sockets=None if listener is None else [listener])
    if not server.started:
        raise typer.Exit(1)
    if server.exit_code:
        raise typer.Exit(server.exit_code)


def kv_events_of(text: str | None):
    """--kv-events-config as a KVEventsConfig; a bad one is a usage error naming what is wrong."""
    from tokenworks.engine.options import KVEventsConfig

    if text is None:
        return None
    try:
        return KVEventsConfig.from_json(text)
    except (ValueError, TypeError) as error:
        raise typer.BadParameter(str(error), param_hint="--kv-events-config") from None


def lora_modules_of(specs: list[str]) -> dict[str, str]:
    """--lora-modules NAME=PATH values as a dict; a bad one is a usage error naming it."""
    modules: dict[str, str] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise typer.BadParameter(f"{spec!r} is not NAME=PATH", param_hint="--lora-modules")
        if name in modules:
            raise typer.BadParameter(f"the name {name!r} is given twice", param_hint="--lora-modules")
        modules[name] = path
    return modules


# Options a worker of a fleet does not take from the command line: the router has them (the
# address, the key) or the fleet sets them (threads), or they make no sense twice.
# The fleet decides these for each worker itself (a KV events endpoint each, on a free port).
_FLEET_OWN = {
    "model",
    "host",
    "port",
    "fd",
    "api_key",
    "threads",
    "workers",
    "router_policy",
    "access_log",
    "kv_events_config",
}


def serve_fleet(
    ctx: typer.Context, model: Path, count: int, threads: int | None, host: str, port: int,
    listener: socket.socket | None, api_key: str | None, policy: str, access_log: bool,
) -> None:  # fmt: skip
    """N workers of the model as processes, and the router in front of them on host:port (or on
    `listener`, the socket inherited through --fd).

    The router's socket listens before the workers start: a port that is taken fails at once, not
    after the workers loaded, and no process can take it while they load."""
    import os

    import uvicorn
    from rich.console import Console

    from tokenworks.router.app import RouterConfig, create_router_app
    from tokenworks.router.fleet import Fleet
    from tokenworks.serve.server import Server, listening_socket

    config = RouterConfig(workers=[], policy=policy, host=host, port=port, api_key=api_key, tokenizer=str(model))
    try:
        config.validate()
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--router-policy") from None
    listener = listener or listening_socket(host, port)
    fleet = Fleet(str(model), count, threads or len(os.sched_getaffinity(0)), worker_options(ctx))
    try:
        fleet.start()
        Console(stderr=True).print(fleet.describe())
        config.workers = list(fleet.urls)
        app = create_router_app(config)
        server = Server(uvicorn.Config(app, host=host, port=port, access_log=access_log, log_level="info"))
        server.run(sockets=[listener])  # until SIGTERM or Ctrl-C
    finally:
        fleet.stop()
        listener.close()
    if not server.started:
        raise typer.Exit(1)


def worker_options(context: typer.Context) -> list[str]:
    """The serve options given on this command line, as arguments for each worker of a fleet."""
    arguments: list[str] = []
    for param in context.command.params:
        source = context.get_parameter_source(param.name)
        if param.name in _FLEET_OWN or source is None or source.name not in ("COMMANDLINE", "ENVIRONMENT"):
            continue
        value, flag = context.params[param.name], param.opts[0]
        if param.is_flag:
            arguments += [flag] if value else []
        elif param.multiple:
            for item in value:
                arguments += [flag, str(item)]
        else:
            arguments += [flag, str(value)]
    return arguments
