"""`tokenworks models ...`: the model registry from the command line (list, show, register, promote,
rollback, history). It reads configs and hashes files, so it never imports torch."""

from __future__ import annotations

import getpass
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from tokenworks.flywheel import promotion
from tokenworks.flywheel.promotion import Endpoint
from tokenworks.flywheel.registry import CHAMPION, DEFAULT_REGISTRY, LogEntry, ModelVersion, Registry, RegistryError

models_app = typer.Typer(
    help="The model registry: versions with lineage, aliases (champion, challenger), and the promotion log.",
    no_args_is_help=True,
)
REGISTRY_OPTION = typer.Option(
    DEFAULT_REGISTRY, "--registry", envvar="TOKENWORKS_REGISTRY", dir_okay=False, help="The registry's SQLite file."
)
ALIAS_OPTION = typer.Option(CHAMPION, "--alias", help="The alias to move: champion, challenger or any name.")
SERVE_OPTION = typer.Option(
    None, "--serve", help="A server or router URL: after recording, swap the version in behind --served-name there."
)
SERVED_NAME_OPTION = typer.Option(
    "champion", "--served-name", help="With --serve: the model name clients ask for (an adapter's name)."
)
API_KEY_OPTION = typer.Option(None, "--api-key", envvar="TOKENWORKS_API_KEY", help="With --serve: the endpoint's key.")


def register(app: typer.Typer) -> None:
    app.add_typer(models_app, name="models")


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no login name in a bare container: still say it was a person
        return "user"


def _when(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _read_evaluation(path: Path | None) -> dict[str, Any] | None:
    if path is None:
        return None
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RegistryError(f"cannot read the evaluation {path}: {error}") from None
    if not isinstance(value, dict):
        raise RegistryError(f"the evaluation {path} must be a JSON object")
    return value


def _aliases_of(registry: Registry) -> dict[int, list[str]]:
    names: dict[int, list[str]] = {}
    for alias, version in registry.aliases().items():
        names.setdefault(version, []).append(alias)
    return names


@models_app.command("list")
def list_versions(registry_path: Path = REGISTRY_OPTION) -> None:
    """Every registered version, with its aliases."""
    registry = Registry(registry_path, create=False)
    aliases = _aliases_of(registry)
    table = Table(title=f"models in {registry_path}")
    for column in ("version", "name", "kind", "aliases", "parent", "content", "created (UTC)"):
        table.add_column(column)
    for version in registry.versions():
        table.add_row(
            str(version.version), version.name, version.kind, ", ".join(aliases.get(version.version, [])),
            str(version.parent or ""), version.content_hash[:12], _when(version.created),
        )  # fmt: skip
    Console().print(table)


@models_app.command("show")
def show(version: int = typer.Argument(..., help="A version number."), registry_path: Path = REGISTRY_OPTION) -> None:
    """One version: its files, shape, lineage and evaluation."""
    registry = Registry(registry_path, create=False)
    Console().print(_version_table(registry.get(version), _aliases_of(registry).get(version, [])))


def _version_table(version: ModelVersion, aliases: list[str]) -> Table:
    table = Table(title=f"version {version.version}", show_header=False)
    rows = {
        "name": version.name, "kind": version.kind, "aliases": ", ".join(aliases), "path": version.path,
        "content sha256": version.content_hash, "base": version.base_path or "", "base sha256": version.base_hash or "",
        "shape": ", ".join(f"{k}={v}" for k, v in version.shape.as_dict().items()),
        "parent": str(version.parent or ""), "dataset manifest": version.dataset_manifest or "",
        "dataset sha256": version.dataset_hash or "", "training run": version.training_run or "",
        "evaluation": json.dumps(version.evaluation, sort_keys=True) if version.evaluation else "",
        "created (UTC)": _when(version.created),
    }  # fmt: skip
    for key, value in rows.items():
        table.add_row(key, value)
    return table


@models_app.command("register")
def register_version(
    path: Path = typer.Argument(..., help="A checkpoint directory or a LoRA adapter directory (PEFT layout)."),
    name: str = typer.Option(None, "--name", help="The version's name; default: the directory's name."),
    base: Path = typer.Option(None, "--base", help="An adapter's base checkpoint, if its config does not say."),
    parent: int = typer.Option(None, "--parent", help="The version this one was trained from."),
    dataset_manifest: Path = typer.Option(None, "--dataset-manifest", help="The training data's manifest.json."),
    training_run: Path = typer.Option(None, "--training-run", help="The training run's directory."),
    evaluation: Path = typer.Option(None, "--evaluation", help="A JSON file of the version's evaluation."),
    reason: str = typer.Option("", "--reason", help="Why, for the log."),
    registry_path: Path = REGISTRY_OPTION,
) -> None:
    """Record a new version (refused if its base shape differs from the champion's)."""
    registry = Registry(registry_path)
    version = registry.register(
        path, name=name, base=base, parent=parent, dataset_manifest=dataset_manifest, training_run=training_run,
        evaluation=_read_evaluation(evaluation), actor=_user(), reason=reason,
    )  # fmt: skip
    Console().print(f"registered version {version.version} ({version.kind}, {version.name}) in {registry_path}")


@models_app.command("promote")
def promote(
    version: int = typer.Argument(..., help="The version to promote."),
    alias: str = ALIAS_OPTION,
    reason: str = typer.Option("", "--reason", help="Why, for the log."),
    evaluation: Path = typer.Option(None, "--evaluation", help="A JSON file of the evaluation that justifies it."),
    registry_path: Path = REGISTRY_OPTION,
    serve: str = SERVE_OPTION,
    served_name: str = SERVED_NAME_OPTION,
    api_key: str = API_KEY_OPTION,
) -> None:
    """Point an alias (champion by default) at a version; with --serve, serve it there at once (hot swap)."""
    endpoint = Endpoint(serve, served_name, api_key) if serve else None
    entry = promotion.promote(
        Registry(registry_path, create=False), version, alias, endpoint=endpoint, actor=_user(), reason=reason,
        evaluation=_read_evaluation(evaluation),
    )  # fmt: skip
    before = f" (was version {entry.from_version})" if entry.from_version is not None else ""
    Console().print(f"{alias} is now version {entry.to_version}{before}{_served(endpoint)}")


def _served(endpoint: Endpoint | None) -> str:
    return f", served as {endpoint.served_name!r} at {endpoint.url}" if endpoint else ""


@models_app.command("rollback")
def rollback(
    alias: str = ALIAS_OPTION,
    reason: str = typer.Option("", "--reason", help="Why, for the log."),
    registry_path: Path = REGISTRY_OPTION,
    serve: str = SERVE_OPTION,
    served_name: str = SERVED_NAME_OPTION,
    api_key: str = API_KEY_OPTION,
) -> None:
    """Point an alias back at the version it held before the current one; with --serve, serve that one there."""
    endpoint = Endpoint(serve, served_name, api_key) if serve else None
    entry = promotion.rollback(
        Registry(registry_path, create=False), alias, endpoint=endpoint, actor=_user(), reason=reason
    )
    Console().print(
        f"{alias} is back to version {entry.to_version} (was version {entry.from_version}){_served(endpoint)}"
    )


@models_app.command("history")
def history(
    alias: str = typer.Option(None, "--alias", help="Only the entries that moved this alias."),
    registry_path: Path = REGISTRY_OPTION,
) -> None:
    """The promotion log: every register, promote, rollback and refusal, oldest first."""
    entries = Registry(registry_path, create=False).history(alias)
    Console().print(_history_table(entries, registry_path))


def _history_table(entries: list[LogEntry], registry_path: Path) -> Table:
    table = Table(title=f"promotion log of {registry_path}")
    for column in ("#", "time (UTC)", "actor", "action", "alias", "from", "to", "reason"):
        table.add_column(column)
    for entry in entries:
        table.add_row(
            str(entry.id), _when(entry.time), entry.actor, entry.action, entry.alias or "",
            "" if entry.from_version is None else str(entry.from_version),
            "" if entry.to_version is None else str(entry.to_version), entry.reason,
        )  # fmt: skip
    return table
