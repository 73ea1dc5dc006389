"""Exceptions of the profile store.

Every error the store raises on purpose is a `StoreError`; the CLI maps them to exit codes
(`StoreError` -> 1, among them `StorePermissionError` and `StoreDiskFullError`; `SchemaError`
and `CorruptStoreError` -> 3). Invalid payloads (a config that
does not validate, a NaN metric) raise pydantic's `ValidationError`, a `ValueError`, before
anything is written.
"""

from __future__ import annotations

__all__ = [
    "CorruptStoreError",
    "ProfileNotFoundError",
    "ReadOnlyStoreError",
    "RunNotFoundError",
    "SchemaError",
    "SchemaTooNewError",
    "SchemaTooOldError",
    "StoreDiskFullError",
    "StoreError",
    "StoreNotFoundError",
    "StorePermissionError",
    "ModelNotFoundError",
    "ImportFormatError",
    "ProfileDistanceWarning",
]


class StoreError(Exception):
    """Base class of the store's errors (CLI exit code 1 unless a subclass says otherwise)."""

    exit_code = 1


class StoreNotFoundError(StoreError):
    """A reader opened a store that does not exist (a missing SQLite file, an empty database)."""


class ReadOnlyStoreError(StoreError):
    """A write was attempted through a store opened with ``readonly=True``."""


class ModelNotFoundError(StoreError, LookupError):
    """No model of that name is registered."""


class RunNotFoundError(StoreError, LookupError):
    """No tuning run of that name or id."""


class ProfileNotFoundError(StoreError, LookupError):
    """No profile matches the request (model, length, calibration kind)."""


class ImportFormatError(StoreError, ValueError):
    """An export file that is not a sampleattn store export, or of a newer format version."""


class SchemaError(StoreError):
    """The database's schema revision does not match this version of sampleattn (exit code 3)."""

    exit_code = 3


class SchemaTooNewError(SchemaError):
    """The database was written by a newer sampleattn whose schema this one does not know."""


class SchemaTooOldError(SchemaError):
    """A reader opened a database of an older schema; ``sattn-store upgrade`` migrates it."""


class CorruptStoreError(StoreError):
    """The file is not a SQLite database, or the database is damaged (exit code 3).

    The store never writes to such a file.
    """

    exit_code = 3


class StorePermissionError(StoreError):
    """This user may not read or write the store's file or folder (or the database role lacks a
    privilege). The message names the path and what to do; nothing was written."""


class StoreDiskFullError(StoreError):
    """The disk holding the store (or the database server's) is full: the failed call wrote
    nothing (its transaction was rolled back)."""


class ProfileDistanceWarning(UserWarning):
    """`get_profile` picked a profile tuned at a length far from the one asked for."""
