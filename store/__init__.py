"""The profile store: tuning runs, trials and the chosen profiles, in SQLite or any SQL database.

    from sampleattn.store import ProfileStore
    with ProfileStore(readonly=True) as store:
        profile = store.get_profile("smollm2-135m", "32k")   # the bucket rule picks the length
        profile.config                                      # a ModelAttentionProfile

The tuner writes (``ProfileStore(url)``); everything else reads (``readonly=True``). See
``docs/store.md`` for the schema, the bucket rule, concurrency, migrations and the
``sattn-store`` command line.

Attributes load lazily (``lazy_loader``): ``import sampleattn.store`` imports neither SQLAlchemy nor Alembic, so
that the error classes and the bucket rule are cheap to import.
"""

from __future__ import annotations

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(__name__, submod_attrs={
    "store": ["ProfileStore", "default_url", "normalize_url"],
    "buckets": ["BucketChoice", "choose_bucket", "DEFAULT_FAR_RATIO"],
    "pareto": ["pareto_front"],
    "migrate": ["HEAD_REVISION", "KNOWN_REVISIONS"],
    "schemas": ["CalibrationInfo", "ImportSummary", "ModelInfo", "ParamSpace", "ProfileRecord", "RunInfo",
                "StoreExport", "TrialMetrics", "TrialRecord", "content_hash", "search_space_from_distributions"],
    "errors": ["StoreError", "StoreNotFoundError", "StorePermissionError", "StoreDiskFullError",
               "ReadOnlyStoreError", "ModelNotFoundError", "RunNotFoundError", "ProfileNotFoundError",
               "ImportFormatError", "SchemaError", "SchemaTooNewError", "SchemaTooOldError",
               "CorruptStoreError", "ProfileDistanceWarning"],
})
