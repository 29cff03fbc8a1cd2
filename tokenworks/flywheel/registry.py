"""The model registry: versions with their lineage, aliases, and an append-only promotion log, in SQLite.

Three tables in one file (WAL mode, so a server can read aliases while the flywheel writes):
- `model_versions`: one row per registered checkpoint or LoRA adapter, never changed after;
- `aliases`: `champion`, `challenger` or any name -> a version (the only mutable state);
- `promotion_log`: every register, promote, rollback and refusal, with who, why and on what
  evaluation. Triggers make it append-only in the database itself, whoever writes to it.

An alias's history is its promotions and rollbacks replayed from the log: a promotion pushes a
version, a rollback pops one. So rollback returns to what was in production before, not to
version - 1.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from tokenworks.errors import TokenworksError
from tokenworks.flywheel.model_files import BaseShape, file_sha256, inspect_model

DEFAULT_REGISTRY = Path("tokenworks-registry.db")
CHAMPION, CHALLENGER = "champion", "challenger"
FLYWHEEL_ACTOR = "flywheel"
Action = Literal["register", "promote", "rollback", "refuse"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS model_versions (
    version INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('checkpoint', 'lora')),
    path TEXT NOT NULL,
    content_hash TEXT NOT NULL,
    base_hash TEXT,
    base_path TEXT,
    shape TEXT NOT NULL,
    parent INTEGER REFERENCES model_versions (version),
    dataset_manifest TEXT,
    dataset_hash TEXT,
    training_run TEXT,
    evaluation TEXT,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS aliases (
    alias TEXT PRIMARY KEY,
    version INTEGER NOT NULL REFERENCES model_versions (version),
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS promotion_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time REAL NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL CHECK (action IN ('register', 'promote', 'rollback', 'refuse')),
    alias TEXT,
    from_version INTEGER,
    to_version INTEGER,
    evaluation TEXT,
    reason TEXT NOT NULL DEFAULT ''
);
CREATE TRIGGER IF NOT EXISTS promotion_log_no_update BEFORE UPDATE ON promotion_log
BEGIN SELECT RAISE(ABORT, 'the promotion log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS promotion_log_no_delete BEFORE DELETE ON promotion_log
BEGIN SELECT RAISE(ABORT, 'the promotion log is append-only'); END;
"""


class RegistryError(TokenworksError):
    """A registry operation cannot be done as asked: unknown version or alias, nothing to roll back."""


@dataclass(frozen=True, slots=True)
class ModelVersion:
    version: int
    name: str
    kind: str
    path: str
    content_hash: str
    base_hash: str | None
    base_path: str | None
    shape: BaseShape
    parent: int | None
    dataset_manifest: str | None
    dataset_hash: str | None
    training_run: str | None
    evaluation: dict[str, Any] | None
    created: float


@dataclass(frozen=True, slots=True)
class LogEntry:
    id: int
    time: float
    actor: str
    action: str
    alias: str | None
    from_version: int | None
    to_version: int | None
    evaluation: dict[str, Any] | None
    reason: str


class Registry:
    """One registry file. Each method is one transaction; open connections are never shared."""

    def __init__(self, path: Path = DEFAULT_REGISTRY, create: bool = True) -> None:
        self.path = Path(path)
        if not create and not self.path.is_file():
            raise RegistryError(f"no registry at {self.path}: register a model first, or pass --registry")
        try:
            with self._connect() as db:
                db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as error:
            raise RegistryError(f"{self.path} is not a tokenworks registry: {error}") from None

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        # isolation_level None: transactions are begun below, explicitly, rather than by sqlite3's guesswork.
        with closing(sqlite3.connect(self.path, timeout=30, isolation_level=None)) as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA foreign_keys=ON")
            yield db

    @contextmanager
    def _transaction(self, write: bool = False) -> Iterator[sqlite3.Connection]:
        """One transaction; a writing one takes the write lock first (BEGIN IMMEDIATE), so what it
        read (the alias, the log it replays) is what it changes, whoever else writes."""
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    # ---- reading -----------------------------------------------------------------------

    def versions(self) -> list[ModelVersion]:
        with self._transaction() as db:
            return [
                _version(row) for row in db.execute(f"SELECT {_VERSION_COLUMNS} FROM model_versions ORDER BY version")
            ]

    def get(self, version: int) -> ModelVersion:
        with self._transaction() as db:
            row = db.execute(f"SELECT {_VERSION_COLUMNS} FROM model_versions WHERE version = ?", (version,)).fetchone()
        if row is None:
            raise RegistryError(f"no version {version} in {self.path}: `tokenworks models list` shows the versions")
        return _version(row)

    def aliases(self) -> dict[str, int]:
        with self._transaction() as db:
            return dict(db.execute("SELECT alias, version FROM aliases ORDER BY alias"))

    def alias(self, alias: str) -> int | None:
        return self.aliases().get(alias)

    def resolve(self, alias: str) -> ModelVersion:
        """The version an alias names; RegistryError if it names none."""
        version = self.alias(alias)
        if version is None:
            known = ", ".join(self.aliases()) or "none yet"
            raise RegistryError(f"no alias {alias!r} in {self.path} (aliases: {known})")
        return self.get(version)

    def history(self, alias: str | None = None) -> list[LogEntry]:
        """The promotion log in order, or the entries about one alias."""
        query = f"SELECT {_LOG_COLUMNS} FROM promotion_log"
        arguments: tuple[Any, ...] = ()
        if alias is not None:
            query, arguments = query + " WHERE alias = ?", (alias,)
        with self._transaction() as db:
            return [_log_entry(row) for row in db.execute(query + " ORDER BY id", arguments)]

    def lineage(self, alias: str = CHAMPION) -> list[int]:
        """The versions the alias has held, oldest first, as its promotions and rollbacks leave them."""
        return _replay(self.history(alias))

    # ---- writing -----------------------------------------------------------------------

    def register(
        self,
        path: Path,
        *,
        name: str | None = None,
        base: Path | None = None,
        parent: int | None = None,
        dataset_manifest: Path | None = None,
        training_run: Path | None = None,
        evaluation: dict[str, Any] | None = None,
        actor: str = FLYWHEEL_ACTOR,
        reason: str = "",
    ) -> ModelVersion:
        """Record a new version. A candidate of another base shape than the champion's is refused
        (RegistryError), and nothing is written."""
        files = inspect_model(path, base)  # hashing reads every byte: before the write lock, not under it
        if dataset_manifest is not None and not Path(dataset_manifest).is_file():
            raise RegistryError(f"dataset manifest {dataset_manifest} not found")
        manifest_hash = file_sha256(dataset_manifest) if dataset_manifest is not None else None
        now = time.time()
        with self._transaction(write=True) as db:
            _check_fits_champion(db, files.shape, str(files.path))
            if (
                parent is not None
                and db.execute("SELECT 1 FROM model_versions WHERE version = ?", (parent,)).fetchone() is None
            ):
                raise RegistryError(f"parent version {parent} is not in {self.path}")
            cursor = db.execute(
                f"INSERT INTO model_versions ({_VERSION_COLUMNS}) VALUES (NULL, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    name or default_name(files.path), files.kind, str(files.path.resolve()), files.content_hash,
                    files.base_hash, str(files.base_path.resolve()) if files.base_path else None,
                    json.dumps(files.shape.as_dict()), parent,
                    str(Path(dataset_manifest).resolve()) if dataset_manifest else None, manifest_hash,
                    str(Path(training_run).resolve()) if training_run else None, _json(evaluation), now,
                ),
            )  # fmt: skip
            version = int(cursor.lastrowid)
            _append(db, now, actor, "register", None, None, version, evaluation, reason)
        return self.get(version)

    def promote(
        self,
        version: int,
        alias: str = CHAMPION,
        *,
        actor: str = FLYWHEEL_ACTOR,
        reason: str = "",
        evaluation: dict[str, Any] | None = None,
    ) -> LogEntry:
        """Point the alias at a version, logging from what, by whom and why."""
        candidate = self.get(version)
        with self._transaction(write=True) as db:
            if alias == CHAMPION:
                _check_fits_champion(db, candidate.shape, f"version {version}")
            current = _alias_in(db, alias)
            if current == version:
                raise RegistryError(f"version {version} is already {alias}")
            _set_alias(db, alias, version)
            return _append(db, time.time(), actor, "promote", alias, current, version, evaluation, reason)

    def rollback(self, alias: str = CHAMPION, *, actor: str = FLYWHEEL_ACTOR, reason: str = "") -> LogEntry:
        """Point the alias back at the version it held before the current one, by its history."""
        with self._transaction(write=True) as db:
            rows = db.execute(f"SELECT {_LOG_COLUMNS} FROM promotion_log WHERE alias = ? ORDER BY id", (alias,))
            held = _replay([_log_entry(row) for row in rows])
            if not held:
                raise RegistryError(f"no alias {alias!r} in {self.path}: nothing to roll back")
            if len(held) < 2:
                raise RegistryError(f"{alias} has held only version {held[0]}: there is nothing to roll back to")
            _set_alias(db, alias, held[-2])
            return _append(db, time.time(), actor, "rollback", alias, held[-1], held[-2], None, reason)

    def refuse(
        self, version: int, *, evaluation: dict[str, Any] | None, reason: str, alias: str = CHAMPION,
        actor: str = FLYWHEEL_ACTOR,
    ) -> LogEntry:  # fmt: skip
        """Record that a candidate was judged and not promoted (the alias does not move)."""
        self.get(version)
        with self._transaction(write=True) as db:
            # Logged without the alias: a refusal is not a step in the alias's history.
            return _append(db, time.time(), actor, "refuse", None, _alias_in(db, alias), version, evaluation, reason)


_VERSION_COLUMNS = (
    "version, name, kind, path, content_hash, base_hash, base_path, shape, parent, dataset_manifest, dataset_hash, "
    "training_run, evaluation, created"
)
_LOG_COLUMNS = "id, time, actor, action, alias, from_version, to_version, evaluation, reason"


def default_name(path: Path) -> str:
    """The directory's name, or its run's where training wrote it as RUN/checkpoint."""
    resolved = Path(path).resolve()
    return resolved.parent.name if resolved.name == "checkpoint" else resolved.name


def _json(value: dict[str, Any] | None) -> str | None:
    return json.dumps(value, sort_keys=True) if value is not None else None


def _version(row: tuple) -> ModelVersion:
    values = list(row)
    values[7] = BaseShape(**json.loads(values[7]))
    values[12] = json.loads(values[12]) if values[12] else None
    return ModelVersion(*values)


def _log_entry(row: tuple) -> LogEntry:
    values = list(row)
    values[7] = json.loads(values[7]) if values[7] else None
    return LogEntry(*values)


def _check_fits_champion(db: sqlite3.Connection, shape: BaseShape, what: str) -> None:
    """RegistryError unless the shape is the champion's (or there is no champion yet)."""
    version = _alias_in(db, CHAMPION)
    if version is None:
        return
    row = db.execute("SELECT shape FROM model_versions WHERE version = ?", (version,)).fetchone()
    differences = shape.differences(BaseShape(**json.loads(row[0])))
    if differences:
        raise RegistryError(
            f"{what} has another base shape than the champion (version {version}): "
            f"{', '.join(differences)}; nothing was registered or promoted"
        )


def _alias_in(db: sqlite3.Connection, alias: str) -> int | None:
    row = db.execute("SELECT version FROM aliases WHERE alias = ?", (alias,)).fetchone()
    return row[0] if row else None


def _set_alias(db: sqlite3.Connection, alias: str, version: int) -> None:
    db.execute(
        "INSERT INTO aliases (alias, version, updated) VALUES (?, ?, ?) "
        "ON CONFLICT (alias) DO UPDATE SET version = excluded.version, updated = excluded.updated",
        (alias, version, time.time()),
    )


def _append(
    db: sqlite3.Connection, now: float, actor: str, action: Action, alias: str | None,
    from_version: int | None, to_version: int | None, evaluation: dict[str, Any] | None, reason: str,
) -> LogEntry:  # fmt: skip
    # The only statement that writes the log: an INSERT (the triggers refuse anything else).
    values = (now, actor, action, alias, from_version, to_version, _json(evaluation), reason)
    cursor = db.execute(
        "INSERT INTO promotion_log (time, actor, action, alias, from_version, to_version, evaluation, reason) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        values,
    )
    return LogEntry(int(cursor.lastrowid), now, actor, action, alias, from_version, to_version, evaluation, reason)


def _replay(entries: list[LogEntry]) -> list[int]:
    held: list[int] = []
    for entry in entries:
        if entry.action == "promote" and entry.to_version is not None:
            held.append(entry.to_version)
        elif entry.action == "rollback" and held:
            held.pop()
    return held
