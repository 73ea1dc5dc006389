"""`ProfileStore`: where tuning results live and where the operator finds its parameters.

One writer, many readers:

* The **writer** is the tuning driver (``ProfileStore(url)``). It creates the store when it does
  not exist yet, migrates an older schema to the head revision when it opens it, and is the only
  process that writes: runs, trials, profiles, imports.
* **Readers** (``ProfileStore(url, readonly=True)``: `SampleAttention.from_profile`, the
  ``sattn-store`` commands that only read) never write, not even to create or migrate. A reader
  on a missing store gets `StoreNotFoundError`, on an older schema `SchemaTooOldError` (run
  ``sattn-store upgrade``); any write method raises `ReadOnlyStoreError`.

On SQLite the store uses WAL (readers do not block the writer, nor the writer the readers), a
busy timeout (30 s by default) and foreign keys; readers' connections are ``query_only``
(on PostgreSQL, read-only sessions), so a reader cannot write even through the engine, and a
reader of a read-only file or folder opens it read-only and leaves no file beside it
(``engine``). Any other SQLAlchemy URL works the same (PostgreSQL is tested). On open, the
schema revision is checked: a revision this package does not know (a newer sampleattn wrote
it) raises `SchemaTooNewError`; a file that is not a SQLite database, or a damaged one (the
writer runs SQLite's integrity check before it writes), raises `CorruptStoreError` and is left
untouched (``schema_check``).

The class is put together from one mixin per entity (``model_repo``, ``run_repo``,
``trial_repo``, ``profile_repo``) over `StoreBase` (``base``: the connection, sessions, the
upsert); export and import live in ``transfer``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

from .base import StoreBase
from .engine import default_url, normalize_url
from .model_repo import ModelMethods
from .profile_repo import ProfileMethods
from .run_repo import RunMethods
from .schemas import ImportSummary, StoreExport
from .transfer import export_store, import_into, read_export
from .trial_repo import TrialMethods

__all__ = ["ProfileStore", "default_url", "normalize_url"]


class ProfileStore(ModelMethods, RunMethods, TrialMethods, ProfileMethods, StoreBase):
    """Tuning runs, trials and profiles in a SQL database (SQLite by default).

    Args:
        url: a SQLAlchemy URL (``sqlite:////path/store.sqlite``,
            ``postgresql://user@host/db``) or a file path; `default_url()` when None.
        readonly: open as a reader: never create, migrate or write (see the module docstring).
        create: (writer only) create the store when the database is empty or the SQLite file
            missing; with False such a store raises `StoreNotFoundError`.
        busy_timeout_s: how long SQLite waits for a lock before giving up.

    Raises:
        StoreNotFoundError: a reader (or ``create=False``) on a missing or empty store.
        SchemaTooNewError: the database has a schema revision this sampleattn does not know.
        SchemaTooOldError: a reader on an older schema (run ``sattn-store upgrade``).
        CorruptStoreError: not a SQLite database, or a damaged one (left untouched).
        StorePermissionError: the writer may not write the file or its folder (a reader: read).
        StoreDiskFullError: the disk is full (raised by the call that could not write).
        StoreError: cannot connect, bad URL, a missing database driver, other database errors.

    Use as a context manager, or call `close()`; an open store must not cross a ``fork()``.
    """

    def __enter__(self) -> ProfileStore:
        return self

    def export(self, models: Iterable[str] | None = None, *, include_trials: bool = True) -> StoreExport:
        """The store (or some models) as a `StoreExport`; ``.model_dump_json()`` writes it."""
        return export_store(self, models, include_trials=include_trials)

    def import_(self, data: StoreExport | Mapping[str, Any] | str | os.PathLike[str]) -> ImportSummary:
        """Import an export (object, dict, JSON text or file path), in one transaction.

        Rows are matched on their natural keys and upserted: models by name, runs by name,
        trials by (run, study, number), profiles by (model, length, calibration kind). The
        timestamps of the export are kept. Returns the counts written.

        Raises:
            ImportFormatError: not a store export, a newer format version, or invalid content.
        """
        return import_into(self, read_export(data))
