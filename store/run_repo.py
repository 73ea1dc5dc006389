"""Tuning runs: starting, resuming, finishing, reading and deleting them (a mixin of `ProfileStore`)."""

from __future__ import annotations

import socket
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from sampleattn.lengths import parse_length

from .base import RowView, StoreBase, environment
from .errors import RunNotFoundError, StoreError
from .model_repo import model_id
from .models import ModelRow, RunRow
from .schemas import CalibrationInfo, ParamSpace, RunInfo, utcnow

__all__ = ["RunMethods", "run_info", "run_row", "run_values"]

#: `CalibrationInfo`'s fields are the run's ``calibration_*`` columns.
_CALIBRATION_FIELDS = tuple(CalibrationInfo.model_fields)


def run_info(row: RunRow, model: str) -> RunInfo:
    """The record of a run row, with its model's name."""
    calibration = {name: getattr(row, f"calibration_{name}") for name in _CALIBRATION_FIELDS}
    return RunInfo.model_validate(RowView(row, model=model, calibration=calibration), from_attributes=True)


def run_values(session: Session, run: RunInfo, where: str) -> dict[str, Any]:
    """The columns of a run row (the model must be registered)."""
    values = run.model_dump(exclude={"model", "calibration"})
    values.update({f"calibration_{name}": value for name, value in run.calibration.model_dump().items()})
    values["model_id"] = model_id(session, run.model, where)
    return values


def run_row(session: Session, run: RunInfo | str | int, where: str) -> RunRow:
    """The row of a run given as a record, a name or an id (`RunNotFoundError` if none)."""
    if isinstance(run, RunInfo):
        run = run.name
    if isinstance(run, int) and not isinstance(run, bool):
        row = session.get(RunRow, run)
    else:
        row = session.execute(select(RunRow).where(RunRow.name == str(run))).scalar()
    if row is None:
        raise RunNotFoundError(f"no tuning run {run!r} in the store at {where}")
    return row


def _model_name(session: Session, row: RunRow) -> str:
    return session.get_one(ModelRow, row.model_id).name


class RunMethods(StoreBase):
    """`ProfileStore`'s methods on tuning runs."""

    def start_run(
        self,
        model: str,
        *,
        name: str,
        lengths: Iterable[int | str],
        objective: str,
        calibration: CalibrationInfo | Mapping[str, Any],
        max_error: float | None = None,
        min_retained_mass: float | None = None,
        search_space: Mapping[str, ParamSpace | Mapping[str, Any]] | None = None,
        sampler: str | None = None,
        seed: int | None = None,
        env: Mapping[str, Any] | None = None,
        device: str | None = None,
        host: str | None = None,
        attrs: Mapping[str, Any] | None = None,
        resume: bool = False,
    ) -> RunInfo:
        """Record the start of a tuning run (the model must be registered).

        ``env`` defaults to `sampleattn.env.collect_env()` (which imports torch), ``device`` to
        ``env["device"]`` and ``host`` to this machine's name. A run of the same ``name``
        raises `StoreError`, unless ``resume=True``: then the existing run is returned, set
        back to ``running`` (its other fields are kept; see `find_run`).
        """
        env_info, device = environment(env, device)
        run = RunInfo(
            name=name,
            model=model,
            lengths=[parse_length(n) for n in lengths],
            objective=objective,
            max_error=max_error,
            min_retained_mass=min_retained_mass,
            calibration=calibration,
            search_space=dict(search_space or {}),
            sampler=sampler,
            seed=seed,
            device=device,
            host=host if host is not None else socket.gethostname(),
            env=env_info,
            attrs=dict(attrs or {}),
            status="running",
            started_at=utcnow(),
        )
        with self._session(write=True) as session:
            existing = session.execute(select(RunRow).where(RunRow.name == name)).scalar()
            if existing is None:
                session.add(RunRow(**run_values(session, run, self._where)))
                return run
            existing_model = _model_name(session, existing)
            if not resume:
                raise StoreError(
                    f"a run named {name!r} exists already (model {existing_model}, status "
                    f"{existing.status}); resume it (resume=True / find_run) or choose another name"
                )
            if existing_model != model:
                raise StoreError(f"run {name!r} belongs to model {existing_model!r}, not {model!r}")
            existing.status = "running"
            existing.finished_at = None
            session.flush()
            return run_info(existing, existing_model)

    def find_run(self, name: str) -> RunInfo | None:
        """The run of that name, or None: how the tuner finds the run it resumes."""
        with self._session() as session:
            row = session.execute(select(RunRow).where(RunRow.name == name)).scalar()
            return None if row is None else run_info(row, _model_name(session, row))

    def get_run(self, run: str | int) -> RunInfo:
        """The run of that name (or id); `RunNotFoundError` if none."""
        with self._session() as session:
            row = run_row(session, run, self._where)
            return run_info(row, _model_name(session, row))

    def list_runs(self, model: str | None = None) -> list[RunInfo]:
        """Runs, oldest first, of one model or of all."""
        with self._session() as session:
            query = select(RunRow, ModelRow.name).join(ModelRow, RunRow.model_id == ModelRow.id)
            if model is not None:
                query = query.where(ModelRow.id == model_id(session, model, self._where))
            rows = session.execute(query.order_by(RunRow.started_at, RunRow.id)).all()
            return [run_info(row, name) for row, name in rows]

    def finish_run(
        self, run: RunInfo | str | int, status: str = "complete", *, finished_at: datetime | None = None
    ) -> RunInfo:
        """Set a run's final status (``complete``, ``failed``, ``interrupted``) and end time."""
        if status not in ("complete", "failed", "interrupted", "running"):
            raise ValueError(f"status {status!r} is not one of complete, failed, interrupted, running")
        with self._session(write=True) as session:
            row = run_row(session, run, self._where)
            row.status = status
            row.finished_at = None if status == "running" else (finished_at or utcnow())
            session.flush()
            return run_info(row, _model_name(session, row))

    def delete_run(self, run: RunInfo | str | int) -> None:
        """Delete a run and its trials; profiles that came from it keep their config (run: None)."""
        with self._session(write=True) as session:
            row = run_row(session, run, self._where)
            session.execute(delete(RunRow).where(RunRow.id == row.id))
