"""The profile store: tuning runs, trials and the chosen profiles, in SQLite or any SQL database.

    from sampleattn.store import ProfileStore
    with ProfileStore(readonly=True) as store:
        profile = store.get_profile("smollm2-135m", "32k")   # the bucket rule picks the length
        profile.config                                      # a ModelAttentionProfile

The tuner writes (``ProfileStore(url)``); everything else reads (``readonly=True``). See
``docs/store.md`` for the schema, the bucket rule, concurrency, migrations and the
``sattn-store`` command line.

Attributes load lazily: ``import sampleattn.store`` imports neither SQLAlchemy nor Alembic, so
that the error classes and the bucket rule are cheap to import.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ProfileStore": "store",
    "default_url": "store",
    "normalize_url": "store",
    "BucketChoice": "buckets",
    "choose_bucket": "buckets",
    "DEFAULT_FAR_RATIO": "buckets",
    "pareto_front": "pareto",
    "HEAD_REVISION": "migrate",
    "KNOWN_REVISIONS": "migrate",
    "CalibrationInfo": "schemas",
    "ImportSummary": "schemas",
    "ModelInfo": "schemas",
    "ParamSpace": "schemas",
    "ProfileRecord": "schemas",
    "RunInfo": "schemas",
    "StoreExport": "schemas",
    "TrialMetrics": "schemas",
    "TrialRecord": "schemas",
    "content_hash": "schemas",
    "search_space_from_distributions": "schemas",
    "StoreError": "errors",
    "StoreNotFoundError": "errors",
    "StorePermissionError": "errors",
    "StoreDiskFullError": "errors",
    "ReadOnlyStoreError": "errors",
    "ModelNotFoundError": "errors",
    "RunNotFoundError": "errors",
    "ProfileNotFoundError": "errors",
    "ImportFormatError": "errors",
    "SchemaError": "errors",
    "SchemaTooNewError": "errors",
    "SchemaTooOldError": "errors",
    "CorruptStoreError": "errors",
    "ProfileDistanceWarning": "errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'sampleattn.store' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
