"""What a store checks when it opens: integrity, schema revision, migration, WAL mode.

`check_schema` is the decision table of ``docs/store.md`` (section "Schema versions and
migrations"): a missing store is created (writer) or refused (reader), an older schema is
migrated (writer) or refused (reader), an unknown revision is refused. Before the writer changes
anything in a SQLite file, `quick_check` runs SQLite's ``PRAGMA quick_check``: a damaged file
that SQLite still opens (a zeroed index page, a truncated table) is refused as corrupt and left
as it is, instead of being migrated and written into.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import inspect, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from sampleattn import __version__

from .diagnose import corrupt_error, from_db_error, masked
from .errors import CorruptStoreError, SchemaTooNewError, SchemaTooOldError, StoreNotFoundError
from .migrate import HEAD_REVISION, KNOWN_REVISIONS, VERSION_TABLE

__all__ = ["STORE_TABLES", "check_schema", "quick_check", "schema_revisions"]

STORE_TABLES = ("sattn_models", "sattn_runs", "sattn_trials", "sattn_profiles")


def schema_revisions(engine: Engine) -> tuple[set[str], set[str]]:
    """(revisions in the version table, store tables present)."""
    with engine.connect() as connection:
        tables = set(inspect(connection).get_table_names())
        revisions: set[str] = set()
        if VERSION_TABLE in tables:
            rows = connection.execute(text(f"SELECT version_num FROM {VERSION_TABLE}"))
            revisions = {row[0] for row in rows}
    return revisions, tables & set(STORE_TABLES)


def quick_check(engine: Engine, url: str) -> None:
    """Raise `CorruptStoreError` unless SQLite's ``PRAGMA quick_check`` finds the file sound.

    ``quick_check`` reads every page (it skips only the check that indexes match their tables),
    in one read transaction; it writes nothing.
    """
    try:
        with engine.connect() as connection:
            rows = connection.exec_driver_sql("PRAGMA quick_check").fetchall()
    except SQLAlchemyError as exc:
        raise from_db_error(exc, url) from exc
    # one line each, without SQLite's "*** in database main ***" heading
    problems = [" ".join(str(row[0]).replace("*** in database main ***", "").split()) for row in rows]
    if problems != ["ok"]:
        shown = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
        raise corrupt_error(masked(url), f"SQLite's integrity check: {shown}")


def check_schema(engine: Engine, url: str, *, readonly: bool, create: bool, sqlite_path: Path | None) -> str | None:
    """Check (and as the writer, create or migrate) the schema; returns the revision migrated from.

    None when nothing was migrated. Raises the `SchemaError`, `StoreNotFoundError` and
    `CorruptStoreError` of the table in the module docstring.
    """
    try:
        revisions, tables = schema_revisions(engine)
    except SQLAlchemyError as exc:
        raise from_db_error(exc, url) from exc
    where = masked(url)
    unknown = revisions - set(KNOWN_REVISIONS)
    if unknown:
        raise SchemaTooNewError(
            f"the store at {where} has schema revision {', '.join(sorted(unknown))}, which this "
            f"sampleattn {__version__} (schema {HEAD_REVISION}) does not know: a newer sampleattn "
            "wrote it. Upgrade sampleattn (pip install -U sampleattn) to read it."
        )
    if len(revisions) > 1:
        raise CorruptStoreError(f"the store at {where} records several schema revisions: {sorted(revisions)}")
    current = next(iter(revisions), None)
    if current is None and tables:
        raise CorruptStoreError(
            f"the database at {where} has store tables ({', '.join(sorted(tables))}) but no "
            f"schema version ({VERSION_TABLE}); it was not made by sattn-store, or was damaged"
        )
    if current is None and not create:
        raise StoreNotFoundError(
            f"no profile store in the database at {where}: run the tuner (sattn-tune) to "
            "create one, or point --store / SAMPLEATTN_STORE at an existing store"
        )
    if current not in (None, HEAD_REVISION) and readonly:
        raise SchemaTooOldError(
            f"the store at {where} has schema revision {current}; this sampleattn needs "
            f"{HEAD_REVISION}. Run `sattn-store upgrade --store {where}` (the tuner also "
            "upgrades it when it next writes)."
        )
    if readonly:
        return None
    if sqlite_path is not None:
        quick_check(engine, url)
    migrated_from = None
    if current != HEAD_REVISION:
        _upgrade(engine, url)
        migrated_from = current
    if sqlite_path is not None:
        _enable_wal(engine, url)
    return migrated_from


def _upgrade(engine: Engine, url: str) -> None:
    from . import migrate

    try:
        migrate.upgrade(engine, HEAD_REVISION)
    except SQLAlchemyError as exc:
        raise from_db_error(exc, url) from exc


def _enable_wal(engine: Engine, url: str) -> None:
    try:
        with engine.connect() as connection:
            mode = connection.exec_driver_sql("PRAGMA journal_mode").scalar()
            if str(mode).lower() != "wal":
                connection.exec_driver_sql("PRAGMA journal_mode=WAL")
    except SQLAlchemyError as exc:
        raise from_db_error(exc, url) from exc
