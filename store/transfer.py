"""Export and import: the store (or some models of it) as one versioned JSON document.

`export_store` reads through the store's own methods, so an export holds exactly the records
the API returns; `import_into` upserts a `StoreExport` on the natural keys in one transaction.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sampleattn import __version__

from .errors import ImportFormatError
from .model_repo import model_id, write_model
from .models import RunRow, TrialRow
from .profile_repo import check_geometry, write_profile
from .run_repo import run_row, run_values
from .schemas import EXPORT_FORMAT, EXPORT_FORMAT_VERSION, ImportSummary, StoreExport, TrialRecord, utcnow
from .trial_repo import trial_values

if TYPE_CHECKING:
    from .store import ProfileStore

__all__ = ["export_store", "import_into", "read_export"]


def read_export(data: StoreExport | Mapping[str, Any] | str | os.PathLike[str]) -> StoreExport:
    """A `StoreExport` from one, a dict, JSON text or a file path.

    Raises:
        ImportFormatError: not a store export, a newer format version, or invalid content.
    """
    if isinstance(data, StoreExport):
        return data
    if isinstance(data, os.PathLike) or (isinstance(data, str) and not data.lstrip().startswith("{")):
        try:
            data = Path(data).read_text()
        except OSError as exc:
            raise ImportFormatError(f"cannot read the export file {data}: {exc}") from exc
    if isinstance(data, str):
        try:
            data = json.loads(data)
        except json.JSONDecodeError as exc:
            raise ImportFormatError(f"the export is not valid JSON: {exc}") from exc
    if not isinstance(data, Mapping) or data.get("format") != EXPORT_FORMAT:
        found = data.get("format") if isinstance(data, Mapping) else type(data).__name__
        raise ImportFormatError(f"not a sampleattn store export (format {found!r}, expected {EXPORT_FORMAT!r})")
    version = data.get("format_version")
    if not isinstance(version, int) or version > EXPORT_FORMAT_VERSION:
        raise ImportFormatError(
            f"the export has format version {version!r}; this sampleattn {__version__} reads versions up to "
            f"{EXPORT_FORMAT_VERSION}. Upgrade sampleattn to import it."
        )
    try:
        return StoreExport.model_validate(data)
    except ValueError as exc:
        raise ImportFormatError(f"the export does not validate: {exc}") from exc


def export_store(store: ProfileStore, models: Iterable[str] | None, *, include_trials: bool) -> StoreExport:
    """The store (or the ``models``) as a `StoreExport` (see `ProfileStore.export`)."""
    names = None if models is None else list(models)
    if names is not None:
        for name in names:
            store.get_model(name)  # ModelNotFoundError for an unknown name
    selected = [m for m in store.list_models() if names is None or m.name in names]
    keep = {m.name for m in selected}
    runs = [r for r in store.list_runs() if r.model in keep]
    trials: list[TrialRecord] = []
    if include_trials:
        run_names = {r.name for r in runs}
        trials = [t for t in store.trials() if t.run in run_names]
    return StoreExport(
        exported_at=utcnow(),
        sampleattn_version=__version__,
        schema_revision=store.schema_revision,
        models=selected,
        runs=runs,
        trials=trials,
        profiles=[p for p in store.list_profiles() if p.model in keep],
    )


def import_into(store: ProfileStore, export: StoreExport) -> ImportSummary:
    """Upsert ``export`` into ``store`` in one transaction (see `ProfileStore.import_`)."""
    where = store._where
    with store._session(write=True) as session:
        now = utcnow()
        model_ids = {m.name: write_model(session, m, now) for m in export.models}
        for run in export.runs:
            if run.model not in model_ids:
                model_ids[run.model] = model_id(session, run.model, where)
        run_ids = {run.name: store._upsert(session, RunRow, run_values(session, run, where), ["name"])
                   for run in export.runs}
        for trial in export.trials:
            run_id = run_ids.get(trial.run) or run_row(session, trial.run, where).id
            store._upsert(session, TrialRow, trial_values(trial, run_id), ["run_id", "study", "number"])
        for profile in export.profiles:
            profile_model = model_ids.get(profile.model) or model_id(session, profile.model, where)
            check_geometry(session, profile.config, profile_model)
            run_id = None
            if profile.run is not None:
                run_id = run_ids.get(profile.run) or run_row(session, profile.run, where).id
            write_profile(session, profile, profile_model, run_id)
    return ImportSummary(
        models=len(export.models), runs=len(export.runs), trials=len(export.trials), profiles=len(export.profiles)
    )
