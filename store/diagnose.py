"""What a database or file-system error means for the user: the store's own exceptions.

Every error that reaches the user from SQLite, PostgreSQL or the file system goes through
`from_db_error` or `from_os_error`, which name the store, say what went wrong in the user's
terms (damaged, locked, not writable, disk full, unreachable) and what to do. Imports no
SQLAlchemy: it reads the DBAPI error's attributes (``sqlite_errorname``, ``pgcode``).
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from .errors import CorruptStoreError, StoreDiskFullError, StoreError, StorePermissionError

__all__ = [
    "corrupt_error",
    "disk_full_error",
    "from_db_error",
    "from_os_error",
    "masked",
    "permission_error",
    "sqlite_path_of",
    "writable",
]

#: Below this much free space, SQLite's "disk I/O error" is taken for a full disk (SQLite
#: reports some ENOSPC cases, such as growing the ``-shm`` file, as SQLITE_IOERR).
_LOW_SPACE_BYTES = 1 << 20

_CORRUPT_WORDS = ("not a database", "malformed", "disk image", "file is encrypted")


def masked(url: str) -> str:
    """The URL with its password hidden (as it appears in messages)."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


def sqlite_path_of(url: str) -> Path | None:
    """The file of a ``sqlite:///PATH`` URL (None for other URLs, in-memory and ``file:`` URIs)."""
    if not url.startswith("sqlite"):
        return None
    _, _, database = url.partition(":///")
    database = database.split("?", 1)[0]
    if database in ("", ":memory:") or database.startswith("file:"):
        return None
    return Path(database)


def writable(path: Path) -> bool:
    """Whether this process may write ``path`` (False on a read-only mount or immutable file)."""
    effective = os.access in os.supports_effective_ids
    return os.access(path, os.W_OK, effective_ids=effective)


def _free_bytes(path: Path) -> int | None:
    for candidate in (path, *path.parents):
        try:
            stats = os.statvfs(candidate)
        except OSError:
            continue
        return stats.f_bavail * stats.f_frsize
    return None


def corrupt_error(where: str, detail: str) -> CorruptStoreError:
    """A damaged store: the message every corruption case shares."""
    return CorruptStoreError(
        f"the store at {where} is damaged ({detail}); it was left untouched. "
        "Restore it from a backup or an export (sattn-store import), or move it away."
    )


def disk_full_error(where: str, path: Path | None, detail: str) -> StoreDiskFullError:
    """The disk holding ``path`` (or the database server's disk) is full."""
    if path is not None:
        free = _free_bytes(path)
        left = f" ({free // 1024} KiB free)" if free is not None else ""
        place = f"the disk holding {path}{left} is full"
    else:
        place = f"the database server of {where} has no space left"
    return StoreDiskFullError(
        f"{place} ({detail}): nothing of this change was written, the store is as it was. Free "
        "space there, or choose another location (--store / SAMPLEATTN_STORE)."
    )


def permission_error(path: Path, detail: str, *, reading: bool = False) -> StorePermissionError:
    """This user cannot write (or read) the store file ``path`` or its folder."""
    if reading:
        return StorePermissionError(
            f"cannot read the store file {path} ({detail}): this user has no read access to it. "
            "Fix its permissions, or point --store / SAMPLEATTN_STORE at a store you can read."
        )
    folder = next((p for p in (path.parent, *path.parent.parents) if p.exists()), path.parent)
    if path.exists() and not writable(path):
        what = f"the store file {path} is read-only for this user"
    elif not writable(folder):
        what = f"the folder {folder} is read-only for this user"
    else:
        what = f"{path} cannot be written by this user"
    return StorePermissionError(
        f"{what} ({detail}). The tuner (the store's only writer) needs write access to the file "
        "and its folder (SQLite keeps its -wal and -shm files beside it): run it as a user who "
        "can write there, fix the permissions, or choose another --store / SAMPLEATTN_STORE. "
        "Readers (sattn-store list/show, from_profile) open such a store read-only."
    )


def from_os_error(exc: OSError, path: Path, doing: str) -> StoreError:
    """An error of the file system while ``doing`` something to the store at ``path``."""
    detail = f"{doing}: {exc.strerror or exc}"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return disk_full_error(str(path), path, detail)
    if isinstance(exc, PermissionError) or exc.errno == errno.EROFS:
        return permission_error(path, detail)
    return StoreError(f"cannot use the store file {path} ({detail})")


def from_db_error(exc: BaseException, url: str) -> StoreError:
    """Turn a SQLAlchemy / DBAPI error into the store's own exception."""
    orig = getattr(exc, "orig", None) or exc
    message = str(orig).strip().splitlines()[0] if str(orig).strip() else type(orig).__name__
    lowered = message.lower()
    sqlite_code = str(getattr(orig, "sqlite_errorname", "") or "")
    pg_code = str(getattr(orig, "pgcode", None) or getattr(orig, "sqlstate", None) or "")
    where = masked(url)
    path = sqlite_path_of(url)
    if any(s in lowered for s in _CORRUPT_WORDS) or sqlite_code.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")):
        return corrupt_error(where, message)
    if sqlite_code.startswith("SQLITE_FULL") or "database or disk is full" in lowered or pg_code == "53100":
        return disk_full_error(where, path, message)
    if path is not None and (sqlite_code.startswith("SQLITE_IOERR") or "disk i/o error" in lowered):
        free = _free_bytes(path)
        if free is not None and free < _LOW_SPACE_BYTES:
            return disk_full_error(where, path, message)
    readonly_words = ("readonly database", "unable to open database file", "read-only file system")
    if path is not None and (sqlite_code.startswith(("SQLITE_READONLY", "SQLITE_CANTOPEN", "SQLITE_PERM"))
                             or any(s in lowered for s in readonly_words)):
        if not writable(path.parent) or (path.exists() and not writable(path)):
            return permission_error(path, message)
    if pg_code == "42501":
        return StorePermissionError(
            f"the database role of {where} lacks a privilege ({message}): grant it (for the "
            "writer: CREATE and USAGE on the schema, and write access to the sattn_ tables), or "
            "use a role that has it."
        )
    if "database is locked" in lowered or "database is busy" in lowered:
        return StoreError(
            f"the store at {where} stayed locked past the busy timeout ({message}); another "
            "process holds a long write transaction. Only the tuning driver should write."
        )
    unreachable = bool(getattr(exc, "connection_invalidated", False))
    if unreachable or "could not connect" in lowered or ("connection" in lowered and "refused" in lowered):
        return StoreError(f"cannot connect to the store at {where}: {message}")
    return StoreError(f"store error at {where}: {message}")
