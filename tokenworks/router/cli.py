"""`tokenworks router --worker URL ...`: one OpenAI-compatible endpoint in front of many workers."""

from __future__ import annotations

import typer

from tokenworks.router.kv_policy import MAX_LOAD_RATIO
from tokenworks.router.policies import DEFAULT_POLICY, POLICY_NAMES


def register(app: typer.Typer) -> None:
    app.command("router")(router)


def router(
    worker: list[str] = typer.Option(
        ...,
        "--worker",
        "-w",
        help="An OpenAI-compatible worker's URL (http://host:port); repeat for more. A vLLM worker's KV events: "
        "URL,kv_events=tcp://host:5557,replay=tcp://host:5558,block_size=16.",
    ),
    policy: str = typer.Option(
        DEFAULT_POLICY, "--policy", help=f"How a request picks its worker: {', '.join(POLICY_NAMES)}."
    ),
    tokenizer: str = typer.Option(
        None,
        "--tokenizer",
        help="kv: the model directory whose tokenizer cuts prompts into blocks; default: the one a worker names.",
    ),
    max_load_ratio: float = typer.Option(
        MAX_LOAD_RATIO,
        "--max-load-ratio",
        min=1.0,
        help="kv: no worker gets a request that would put it above this multiple of the mean load.",
    ),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind; 0.0.0.0 exposes the router."),
    port: int = typer.Option(8000, "--port", min=0, max=65535, help="Port to bind."),
    api_key: str = typer.Option(
        None,
        "--api-key",
        envvar="TOKENWORKS_API_KEY",
        help="Require 'Authorization: Bearer KEY' on /v1/* and /workers.",
    ),
    access_log: bool = typer.Option(False, "--access-log", help="Log every HTTP request."),
) -> None:
    """Route OpenAI requests over many workers (tokenworks servers or vLLM), failing over when one dies."""
    import uvicorn

    from tokenworks.router.app import RouterConfig, create_router_app
    from tokenworks.serve.server import Server  # a drained SIGTERM exits 0

    config = RouterConfig(
        workers=worker, policy=policy, host=host, port=port, api_key=api_key, tokenizer=tokenizer,
        max_load_ratio=max_load_ratio,
    )  # fmt: skip
    try:
        app = create_router_app(config)
    except ValueError as error:
        raise typer.BadParameter(str(error)) from None
    server = Server(uvicorn.Config(app, host=host, port=port, access_log=access_log, log_level="info"))
    server.run()
    if not server.started:
        raise typer.Exit(1)
