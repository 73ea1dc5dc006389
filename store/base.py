"""What every part of `ProfileStore` shares: opening and closing, sessions, the upsert.

`StoreBase` holds the engine and the open/close logic; the entity modules (``model_repo``,
``run_repo``, ``trial_repo``, ``profile_repo``) add their methods as mixins of it, and
``store.ProfileStore`` puts them together. `RowView` lets pydantic read a record from an ORM
row (``model_validate(..., from_attributes=True)``) where the record carries a few attributes
the row does not have as such (the model's name instead of its id, say).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from .diagnose import from_db_error, masked
from .engine import default_url, normalize_url, open_engine, remove_store_files, with_installed_driver
from .errors import ReadOnlyStoreError, StoreError
from .schema_check import check_schema, schema_revisions
from .schemas import EnvInfo, validate_env

__all__ = ["RowView", "StoreBase", "environment"]


def environment(env: Mapping[str, Any] | None, device: str | None) -> tuple[EnvInfo, str | None]:
    """Validated environment metadata (`collect_env()` when None) and the device (the env's when None)."""
    if env is None:
        from sampleattn.env import collect_env  # imports torch: only when needed

        env = collect_env()
    info = validate_env(env)
    if device is None and info.get("device"):
        device = str(info["device"])
    return info, device


class RowView:
    """An ORM row seen with some attributes added or replaced (for ``from_attributes``)."""

    def __init__(self, row: Any, **attributes: Any) -> None:
        self.__dict__.update(attributes)
        self._row = row

    def __getattr__(self, name: str) -> Any:  # only called for what __dict__ lacks
        return getattr(self._row, name)


class StoreBase:
    """The connection of a `ProfileStore` (see its docstring for the arguments)."""

    def __init__(
        self,
        url: str | os.PathLike[str] | None = None,
        *,
        readonly: bool = False,
        create: bool = True,
        busy_timeout_s: float = 30.0,
    ) -> None:
        #: The store's URL (a plain ``postgresql://`` with the driver it uses: `with_installed_driver`).
        self.url: str = with_installed_driver(normalize_url(url) if url is not None else default_url())
        self.readonly = readonly
        self.busy_timeout_s = busy_timeout_s
        #: The revision the database had before this store migrated it (None: no migration).
        self.migrated_from: str | None = None
        self._engine: Engine | None = None
        self._sqlite_path: Path | None = None
        created = False
        try:
            opened = open_engine(self.url, readonly=readonly, create=create and not readonly,
                                 busy_timeout_s=busy_timeout_s)
            self._engine, self._sqlite_path, created = opened.engine, opened.sqlite_path, opened.created
            self.migrated_from = check_schema(self._engine, self.url, readonly=readonly,
                                              create=create and not readonly, sqlite_path=self._sqlite_path)
        except BaseException:
            self.close()
            if created and self._sqlite_path is not None:
                # A store this call began to create and could not finish (a full disk, say)
                # is removed: no half-made file for the next open to trip on.
                remove_store_files(self._sqlite_path)
            raise

    @property
    def _where(self) -> str:
        """The store's URL as messages show it (password hidden)."""
        return masked(self.url)

    def close(self) -> None:
        """Release the database connections."""
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        mode = "readonly" if self.readonly else "writer"
        return f"{type(self).__name__}({self._where!r}, {mode})"

    @property
    def schema_revision(self) -> str:
        """The database's schema revision (always `HEAD_REVISION` once open)."""
        if self._engine is None:
            raise StoreError("the store is closed")
        revisions, _ = schema_revisions(self._engine)
        return next(iter(revisions), "")

    @contextmanager
    def _session(self, *, write: bool = False) -> Iterator[Session]:
        """A session that commits (writes) or rolls back, raising the store's own errors."""
        if self._engine is None:
            raise StoreError("the store is closed")
        if write and self.readonly:
            raise ReadOnlyStoreError(
                f"the store at {self._where} was opened read-only; only the tuning driver writes "
                "(open it with ProfileStore(url) to write)"
            )
        with Session(self._engine, expire_on_commit=False) as session:
            try:
                yield session
                if write:
                    session.commit()
            except SQLAlchemyError as exc:
                session.rollback()
                raise from_db_error(exc, self.url) from exc
            except BaseException:
                session.rollback()
                raise

    @staticmethod
    def _upsert(session: Session, row_cls: Any, values: dict[str, Any], key: Sequence[str]) -> int:
        """Insert ``values`` or update the row with the same natural ``key``; return its id.

        ``created_at`` is kept on update. ON CONFLICT on SQLite and PostgreSQL; a select then
        insert or update elsewhere (safe under the one-writer rule).
        """
        table = row_cls.__table__
        dialect = session.get_bind().dialect.name
        updates = {k: v for k, v in values.items() if k not in key and k != "created_at"}
        if dialect in ("sqlite", "postgresql"):
            if dialect == "sqlite":
                from sqlalchemy.dialects.sqlite import insert
            else:
                from sqlalchemy.dialects.postgresql import insert
            statement = insert(table).values(**values)
            statement = statement.on_conflict_do_update(
                index_elements=list(key), set_={k: statement.excluded[k] for k in updates}
            )
            session.execute(statement)
        else:
            where = [table.c[k] == values[k] for k in key]
            existing = session.execute(select(table.c.id).where(*where).with_for_update()).scalar()
            if existing is None:
                session.execute(table.insert().values(**values))
            else:
                session.execute(table.update().where(table.c.id == existing).values(**updates))
        row_id = session.execute(select(table.c.id).where(*[table.c[k] == values[k] for k in key])).scalar_one()
        return int(row_id)
