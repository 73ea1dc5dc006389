"""Trials: recording them, crash recovery, queries and the Pareto front (a mixin of `ProfileStore`)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import select, update

from sampleattn.config import ModelAttentionProfile, SampleAttentionConfig
from sampleattn.lengths import format_length, parse_length

from .base import RowView, StoreBase
from .model_repo import model_id
from .models import RunRow, TrialRow
from .pareto import pareto_front
from .run_repo import run_row
from .schemas import RunInfo, TrialMetrics, TrialRecord, utcnow

__all__ = ["TrialMethods", "as_profile", "trial_record", "trial_values"]

#: `TrialMetrics`' fields that are columns of the trials table (``extra`` is ``extra_metrics``).
_METRIC_COLUMNS = tuple(name for name in TrialMetrics.model_fields if name != "extra")


def as_profile(config: ModelAttentionProfile | SampleAttentionConfig | Mapping[str, Any]) -> ModelAttentionProfile:
    """A `ModelAttentionProfile` from one, from a bare `SampleAttentionConfig` (its global config), or a dict."""
    if isinstance(config, ModelAttentionProfile):
        return config
    if isinstance(config, SampleAttentionConfig):
        return ModelAttentionProfile(config=config)
    return ModelAttentionProfile.model_validate(config)


def trial_record(row: TrialRow, run: str) -> TrialRecord:
    """The record of a trial row, with its run's name."""
    metrics = RowView(row, extra=row.extra_metrics)
    return TrialRecord.model_validate(RowView(row, run=run, metrics=metrics), from_attributes=True)


def trial_values(record: TrialRecord, run_id: int) -> dict[str, Any]:
    """The columns of a trial row."""
    values = record.model_dump(exclude={"run", "config", "metrics"})
    now = utcnow()
    values.update(
        run_id=run_id,
        config=record.config.model_dump(mode="json") if record.config is not None else None,
        extra_metrics=dict(record.metrics.extra),
        created_at=record.created_at or now,
        updated_at=record.updated_at or now,
        **{name: getattr(record.metrics, name) for name in _METRIC_COLUMNS},
    )
    return values


class TrialMethods(StoreBase):
    """`ProfileStore`'s methods on trials."""

    def record_trial(
        self,
        run: RunInfo | str | int,
        number: int,
        *,
        seq_len: int | str,
        state: Any,
        params: Mapping[str, Any] | None = None,
        config: ModelAttentionProfile | SampleAttentionConfig | Mapping[str, Any] | None = None,
        metrics: TrialMetrics | Mapping[str, Any] | None = None,
        worker: str | None = None,
        device: str | None = None,
        duration_s: float | None = None,
        error_message: str | None = None,
        study: str | None = None,
    ) -> TrialRecord:
        """Record one trial, or update it: idempotent on (run, study, Optuna trial number).

        ``state`` is ``running``, ``complete``, ``pruned`` or ``failed`` (or an Optuna
        ``TrialState``); ``study`` defaults to the run's name; ``seq_len`` must be one of the
        run's lengths. A resumed run may re-report a trial: the second report replaces the
        first, ``created_at`` stays.
        """
        now = utcnow()
        with self._session(write=True) as session:
            row = run_row(session, run, self._where)
            record = TrialRecord(
                run=row.name,
                study=study or row.name,
                number=number,
                seq_len=parse_length(seq_len),
                state=state,
                params=dict(params or {}),
                config=as_profile(config) if config is not None else None,
                metrics=metrics if metrics is not None else TrialMetrics(),
                worker=worker,
                device=device,
                duration_s=duration_s,
                error_message=error_message,
                created_at=now,
                updated_at=now,
            )
            if record.seq_len not in row.lengths:
                raise ValueError(
                    f"trial {number} is at length {format_length(record.seq_len)}, not one of run "
                    f"{row.name!r}'s lengths ({', '.join(format_length(n) for n in row.lengths)})"
                )
            self._upsert(session, TrialRow, trial_values(record, row.id), ["run_id", "study", "number"])
        return record

    def mark_running_trials_failed(
        self, run: RunInfo | str | int, message: str = "the tuning driver stopped before the trial finished"
    ) -> int:
        """Crash recovery: set the run's ``running`` trials to ``failed``; returns how many."""
        with self._session(write=True) as session:
            row = run_row(session, run, self._where)
            result = session.execute(
                update(TrialRow)
                .where(TrialRow.run_id == row.id, TrialRow.state == "running")
                .values(state="failed", error_message=message, updated_at=utcnow())
            )
            return int(result.rowcount or 0)

    def trials(
        self,
        run: RunInfo | str | int | None = None,
        *,
        model: str | None = None,
        seq_len: int | str | None = None,
        states: Iterable[str] | None = None,
        study: str | None = None,
    ) -> list[TrialRecord]:
        """Trials filtered by run, model, length, state and study; by run, study and number."""
        with self._session() as session:
            query = select(TrialRow, RunRow.name).join(RunRow, TrialRow.run_id == RunRow.id)
            if run is not None:
                query = query.where(TrialRow.run_id == run_row(session, run, self._where).id)
            if model is not None:
                query = query.where(RunRow.model_id == model_id(session, model, self._where))
            if seq_len is not None:
                query = query.where(TrialRow.seq_len == parse_length(seq_len))
            if states is not None:
                query = query.where(TrialRow.state.in_([str(s) for s in states]))
            if study is not None:
                query = query.where(TrialRow.study == study)
            query = query.order_by(RunRow.started_at, RunRow.id, TrialRow.study, TrialRow.number)
            return [trial_record(row, name) for row, name in session.execute(query).all()]

    def pareto(
        self,
        model: str,
        seq_len: int | str,
        *,
        run: RunInfo | str | int | None = None,
        calibration_kind: str | None = None,
    ) -> list[TrialRecord]:
        """The non-dominated complete trials of a model at one length, on (rel_error, latency_ms).

        Trials of every run of the model at exactly ``seq_len`` (or of one ``run``; of one
        ``calibration_kind``), with both metrics present; sorted by latency. Empty when there is
        no such trial (`ModelNotFoundError` when the model is unknown).
        """
        length = parse_length(seq_len)
        with self._session() as session:
            query = (
                select(TrialRow, RunRow.name)
                .join(RunRow, TrialRow.run_id == RunRow.id)
                .where(
                    RunRow.model_id == model_id(session, model, self._where),
                    TrialRow.seq_len == length,
                    TrialRow.state == "complete",
                    TrialRow.rel_error.is_not(None),
                    TrialRow.latency_ms.is_not(None),
                )
            )
            if run is not None:
                query = query.where(TrialRow.run_id == run_row(session, run, self._where).id)
            if calibration_kind is not None:
                query = query.where(RunRow.calibration_kind == calibration_kind)
            rows = session.execute(query.order_by(TrialRow.id)).all()
            candidates = [trial_record(row, name) for row, name in rows]
        return pareto_front(candidates, key=lambda t: (t.metrics.rel_error, t.metrics.latency_ms))

    def tuned_lengths(self, model: str) -> list[int]:
        """The lengths a model has trials at (any run, any state), ascending."""
        with self._session() as session:
            query = (
                select(TrialRow.seq_len)
                .join(RunRow, TrialRow.run_id == RunRow.id)
                .where(RunRow.model_id == model_id(session, model, self._where))
                .distinct()
            )
            return sorted(int(n) for n in session.execute(query).scalars())
