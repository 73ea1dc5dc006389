"""Schema versions and Alembic migrations of the store.

Alembic's version table (named `VERSION_TABLE`, not ``alembic_version``, so that the store can
share a database with Optuna's storage, which uses that name) is the one truth about a
database's schema. The revisions this package ships are listed in `KNOWN_REVISIONS`, oldest
first; `HEAD_REVISION` is the last. ``tests/store/test_store_migrations.py`` checks these
against the migration scripts, so that opening a store needs neither Alembic nor the scripts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["HEAD_REVISION", "KNOWN_REVISIONS", "VERSION_TABLE", "alembic_config", "downgrade", "upgrade"]

VERSION_TABLE = "sattn_alembic_version"

#: Revisions shipped with this package, oldest first: what each one did.
KNOWN_REVISIONS: dict[str, str] = {
    "0001": "first schema: models, runs, trials, profiles",
    "0002": "runs.host; index on trials (run_id, seq_len, state)",
}
HEAD_REVISION = list(KNOWN_REVISIONS)[-1]

_HERE = Path(__file__).resolve().parent


def alembic_config(connection: Any | None = None, url: str | None = None) -> Any:
    """An Alembic `Config` for the shipped migrations, bound to a connection or a URL."""
    from alembic.config import Config

    config = Config(str(_HERE / "alembic.ini"))
    config.set_main_option("script_location", str(_HERE / "migrations"))
    if url is not None:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def _run(engine: Any, action: str, revision: str) -> None:
    from alembic import command

    with engine.connect() as connection:
        sqlite = connection.dialect.name == "sqlite"
        if sqlite:
            # Batch mode rebuilds SQLite tables (copy, drop, rename); with foreign keys on, the
            # drop would cascade into the child tables. The pragma is a no-op in a transaction,
            # so it is set before Alembic begins one.
            connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
            connection.commit()
        try:
            # One transaction for the whole migration, begun here so that Alembic joins it
            # instead of committing on its own: a reader sees the schema before or after, never
            # half-way, and a failure leaves the database as it was. (SQLite has transactional
            # DDL, but its Python driver would run each DDL statement on its own: BEGIN it.)
            if sqlite:
                connection.exec_driver_sql("BEGIN")
            else:
                connection.begin()
            getattr(command, action)(alembic_config(connection), revision)
            if sqlite:
                problems = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                if problems:
                    raise RuntimeError(f"migration would leave dangling foreign keys: {problems[:5]}")
            connection.commit()
        except BaseException:
            connection.rollback()
            raise
        finally:
            if sqlite:
                connection.rollback()
                connection.exec_driver_sql("PRAGMA foreign_keys=ON")
                connection.commit()


def upgrade(engine: Any, revision: str = "head") -> None:
    """Migrate the database behind ``engine`` up to ``revision`` (creating it when empty)."""
    _run(engine, "upgrade", revision)


def downgrade(engine: Any, revision: str) -> None:
    """Migrate the database behind ``engine`` down to ``revision`` (``"base"`` drops all)."""
    _run(engine, "downgrade", revision)
