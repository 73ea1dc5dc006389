"""The store's database connection: its URL, the SQLAlchemy engine, SQLite's open mode and pragmas.

A SQLite store is a file with, while it is in use, two side files beside it (``-wal``, the
write-ahead log, and ``-shm``, its index). Who opens it how:

* the **writer** needs write access to the file and its folder (checked first, so that the
  message names what is read-only); a new store's folder is created.
* a **reader** where it may write the file and its folder opens it normally, read-only by
  ``PRAGMA query_only``: the last connection to close checkpoints and removes the side files.
* a **reader** of a read-only file or folder opens it through a SQLite URI: ``mode=ro`` when a
  writer's ``-wal`` is there (SQLite then reads the log through the writer's ``-shm``), else
  ``mode=ro&immutable=1``, which creates, locks and changes no file. (A read-only connection
  could not remove side files it made, and in a read-only folder it cannot make them at all.)
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import quote

from sqlalchemy import create_engine, event
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

from .diagnose import from_os_error, masked, permission_error, writable
from .errors import CorruptStoreError, StoreError, StoreNotFoundError

__all__ = ["OpenedEngine", "check_sqlite_file", "default_url", "normalize_url", "open_engine", "reader_mode", "remove_store_files",
           "with_installed_driver"]

SQLITE_MAGIC = b"SQLite format 3\x00"

#: Python drivers of a plain ``postgresql://`` URL, in order of preference (SQLAlchemy's own
#: default is psycopg 3 alone).
_POSTGRES_DRIVERS = ("psycopg", "psycopg2")
#: The package that installs a driver module, where its name differs.
_DRIVER_PACKAGES = {"psycopg": "psycopg[binary]", "psycopg2": "psycopg2-binary", "pymysql": "PyMySQL"}


def default_url() -> str:
    """The store's URL when none is given.

    ``SAMPLEATTN_STORE`` (a SQLAlchemy URL or a file path) when set, else the SQLite file
    ``profiles.sqlite`` in `sampleattn.paths.cache_root` (on Linux
    ``$XDG_CACHE_HOME/sampleattn/profiles.sqlite``, ``~/.cache/sampleattn/profiles.sqlite``).
    """
    from sampleattn.paths import cache_root

    env = os.environ.get("SAMPLEATTN_STORE")
    if env:
        return normalize_url(env)
    return normalize_url(cache_root() / "profiles.sqlite")


def normalize_url(location: str | os.PathLike[str]) -> str:
    """A SQLAlchemy URL from a URL or a file path (a path means a SQLite file)."""
    text = os.fspath(location)
    if "://" in text:
        return text
    return "sqlite:///" + str(Path(text).expanduser().resolve())


def with_installed_driver(url: str) -> str:
    """``url``, where a plain ``postgresql://`` (or ``postgres://``) names an installed driver.

    SQLAlchemy takes a plain ``postgresql://`` for psycopg 3 alone; this picks
    ``postgresql+psycopg://`` or, without psycopg 3, ``postgresql+psycopg2://``. Without either
    the URL stays as it is, and opening it says which package to install. (The store passes
    the result on, e.g. to Optuna's storage, so that everything uses the same driver.)
    """
    scheme, _, rest = url.partition("://")
    if scheme not in ("postgresql", "postgres"):
        return url
    driver = next((module for module in _POSTGRES_DRIVERS if _importable(module)), None)
    return f"postgresql+{driver}://{rest}" if driver else f"postgresql://{rest}"


def _importable(module: str) -> bool:
    if module in sys.modules:
        return sys.modules[module] is not None
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def check_sqlite_file(path: Path) -> None:
    """Raise `CorruptStoreError` unless ``path`` is empty or starts with SQLite's header."""
    try:
        with open(path, "rb") as handle:
            header = handle.read(len(SQLITE_MAGIC))
    except IsADirectoryError:
        raise CorruptStoreError(f"{path} is a directory, not a SQLite store file") from None
    except PermissionError as exc:
        raise permission_error(path, exc.strerror or str(exc), reading=True) from None
    except OSError as exc:
        raise StoreError(f"cannot read the store file {path}: {exc}") from exc
    if header and header != SQLITE_MAGIC:
        raise CorruptStoreError(
            f"{path} is not a SQLite database (its first bytes are {header[:16]!r}); it was left "
            "untouched. Point --store / SAMPLEATTN_STORE at a profile store, or move the file away."
        )


def reader_mode(path: Path) -> str:
    """How a reader opens the SQLite file ``path``: ``plain``, ``ro`` or ``immutable``.

    See the module docstring: ``plain`` where the file and its folder are writable, else
    ``ro`` when a writer's ``-shm`` (or a non-empty ``-wal``) is there, else ``immutable``.
    """
    if writable(path) and writable(path.parent):
        return "plain"
    wal, shm = Path(f"{path}-wal"), Path(f"{path}-shm")
    if shm.exists() or (wal.exists() and wal.stat().st_size > 0):
        return "ro"
    return "immutable"


def remove_store_files(path: Path) -> None:
    """Remove a SQLite store file and its side files (a store this process failed to create)."""
    for name in (path, Path(f"{path}-wal"), Path(f"{path}-shm"), Path(f"{path}-journal")):
        try:
            name.unlink()
        except OSError:
            pass


@dataclass(frozen=True)
class OpenedEngine:
    """An engine and what `open_engine` found out about the store's location."""

    engine: Engine
    #: The SQLite file (None on other backends, in memory and for ``file:`` URIs).
    sqlite_path: Path | None = None
    #: The writer is creating the file (it did not exist before).
    created: bool = False


def open_engine(url_text: str, *, readonly: bool, create: bool, busy_timeout_s: float) -> OpenedEngine:
    """The engine of the store at ``url_text`` (checks the SQLite file first; see the module doc).

    Raises:
        StoreNotFoundError: a missing SQLite file that is not to be created.
        CorruptStoreError: a file that is not a SQLite database.
        StorePermissionError: a writer without write access (or a folder it cannot create).
        StoreError: a URL that does not parse, a database driver that is not installed.
    """
    try:
        url = make_url(url_text)
    except ArgumentError as exc:
        raise StoreError(f"cannot read the store URL {url_text!r}: {exc}") from None
    kwargs: dict[str, Any] = {"json_serializer": partial(json.dumps, allow_nan=False)}
    sqlite = url.get_backend_name() == "sqlite"
    path: Path | None = None
    created = False
    if sqlite:
        database = url.database or ""
        if database in ("", ":memory:") or database.startswith("file:"):
            if readonly:
                raise StoreNotFoundError(f"a reader cannot open the in-memory store {url_text!r}")
        else:
            path = Path(database)
            created = _check_location(path, readonly=readonly, create=create)
            mode = reader_mode(path) if readonly else "plain"
            if mode != "plain":
                url = _reader_uri(url, path, immutable=mode == "immutable")
        kwargs["connect_args"] = {"timeout": busy_timeout_s}
    else:
        kwargs["pool_pre_ping"] = True
    try:
        engine = create_engine(url, **kwargs)
    except ImportError as exc:
        raise StoreError(_missing_driver(url_text, exc)) from None
    except (NoSuchModuleError, ArgumentError) as exc:
        raise StoreError(f"cannot open the store URL {masked(url_text)}: {exc}") from None
    if sqlite:
        _sqlite_pragmas(engine, readonly=readonly, timeout_ms=int(busy_timeout_s * 1000))
    elif readonly and url.get_backend_name() == "postgresql":
        _postgres_read_only(engine)
    return OpenedEngine(engine, path, created)


def _check_location(path: Path, *, readonly: bool, create: bool) -> bool:
    """Check the SQLite file before SQLite touches it; True when the writer will create it."""
    if path.exists():
        check_sqlite_file(path)
        if not readonly and not (writable(path) and writable(path.parent)):
            raise permission_error(path, "the writer opens it to write")
        return False
    if not create:
        raise StoreNotFoundError(
            f"no profile store at {path}: run the tuner (sattn-tune) to create one, "
            "or point --store / SAMPLEATTN_STORE at an existing store"
        )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise from_os_error(exc, path, f"creating the folder {path.parent}") from None
    if not writable(path.parent):
        raise permission_error(path, "creating the store")
    return True


def _reader_uri(url: URL, path: Path, *, immutable: bool) -> URL:
    """The ``file:`` URI of a read-only open (``mode=ro``, with ``immutable=1`` when asked)."""
    query = {"mode": "ro", "uri": "true", **({"immutable": "1"} if immutable else {})}
    return url.set(database="file:" + quote(str(path.resolve()), safe="/"), query=query)


def _missing_driver(url_text: str, exc: ImportError) -> str:
    module = (exc.name or "").split(".")[0]
    package = _DRIVER_PACKAGES.get(module, module or "the driver")
    hint = f"pip install '{package}'"
    if module.startswith("psycopg"):
        hint += " (sampleattn's tune extra installs psycopg: pip install 'sampleattn[tune]')"
    return (
        f"cannot open the store URL {masked(url_text)}: its database driver, the Python package "
        f"{module or '?'}, is not installed ({exc}). Install it: {hint}."
    )


def _sqlite_pragmas(engine: Engine, *, readonly: bool, timeout_ms: int) -> None:
    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={timeout_ms}")
        cursor.execute("PRAGMA synchronous=NORMAL")
        if readonly:
            cursor.execute("PRAGMA query_only=ON")
        cursor.close()


def _postgres_read_only(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _read_only(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
        cursor.close()
        dbapi_connection.commit()

