"""The `tokenworks` command. Each area registers its own subcommands here.

Areas import their heavy dependencies (torch, tokenizers) inside their commands, so
`tokenworks --help` stays fast. The project's own errors end as one line on stderr and a
non-zero exit status, never as a traceback.
"""

from __future__ import annotations

import logging
import sys

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape

from tokenworks import __version__
from tokenworks.bench.cli import register as register_bench
from tokenworks.data.cli import register as register_data
from tokenworks.errors import TokenworksError
from tokenworks.factory.cli import register as register_factory
from tokenworks.flywheel.cli import register as register_flywheel
from tokenworks.flywheel.models_cli import register as register_models
from tokenworks.model.cli import register as register_model
from tokenworks.plan.cli import register as register_plan
from tokenworks.router.cli import register as register_router
from tokenworks.serve.cli import register as register_serve
from tokenworks.train.cli import register as register_train

EXIT_ERROR = 1
EXIT_INTERRUPTED = 130

app = typer.Typer(
    name="tokenworks",
    help="tokenworks: an AI factory in one package. Data in, tokens out, measured.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def configure(
    log_level: str = typer.Option(
        "WARNING", "--log-level", help="DEBUG, INFO, WARNING or ERROR.", envvar="TOKENWORKS_LOG"
    ),
) -> None:
    """tokenworks: an AI factory in one package. Data in, tokens out, measured."""
    level = logging.getLevelName(log_level.upper())
    if not isinstance(level, int):
        raise typer.BadParameter(f"unknown log level {log_level!r}", param_hint="--log-level")
    handler = RichHandler(console=Console(stderr=True), show_path=False, rich_tracebacks=False)
    logging.basicConfig(level=level, format="%(message)s", handlers=[handler], force=True)


@app.command()
def version() -> None:
    """Print the tokenworks version."""
    typer.echo(f"tokenworks {__version__}")


register_model(app)
register_data(app)
register_router(app)
register_factory(app)
register_train(app)
register_serve(app)
register_bench(app)
register_flywheel(app)
register_models(app)
register_plan(app)


def main() -> None:
    """Console-script entry point: run the app, turning our errors into a message and exit code."""
    try:
        app()
    except TokenworksError as error:
        # escaped: messages name config sections ("[train] ...") that rich would take for markup
        Console(stderr=True).print(f"[bold red]error:[/] {escape(str(error))}", highlight=False, soft_wrap=True)
        sys.exit(EXIT_ERROR)
    except KeyboardInterrupt:
        Console(stderr=True).print("interrupted")
        sys.exit(EXIT_INTERRUPTED)


if __name__ == "__main__":
    main()
