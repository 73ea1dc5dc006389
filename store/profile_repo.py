"""Profiles: saving them, the bucket rule's lookup, listing and deleting (a mixin of `ProfileStore`)."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from sampleattn.config import ModelAttentionProfile, SampleAttentionConfig
from sampleattn.lengths import format_length, parse_length

from .base import RowView, StoreBase, environment
from .buckets import DEFAULT_FAR_RATIO, BucketChoice, choose_bucket
from .errors import ProfileDistanceWarning, ProfileNotFoundError
from .model_repo import model_id, model_info, model_names
from .models import ModelRow, ProfileRow, RunRow
from .run_repo import run_row
from .schemas import ProfileRecord, RunInfo, TrialMetrics, utcnow
from .trial_repo import as_profile

__all__ = ["ProfileMethods", "check_geometry", "profile_record", "write_profile"]


def profile_record(row: ProfileRow, model: str, run: str | None) -> ProfileRecord:
    """The record of a profile row, with its model's and run's names."""
    return ProfileRecord.model_validate(RowView(row, model=model, run=run), from_attributes=True)


def write_profile(session: Session, record: ProfileRecord, model_id_: int, run_id: int | None) -> int:
    """Upsert a profile on (model, length, calibration kind); returns its id."""
    values = record.model_dump(include={"seq_len", "calibration_kind", "device", "env", "content_hash"})
    values.update(
        model_id=model_id_,
        run_id=run_id,
        config=record.config.model_dump(mode="json"),
        metrics=record.metrics.model_dump(mode="json"),
        created_at=record.created_at or utcnow(),
        updated_at=record.updated_at or utcnow(),
    )
    return StoreBase._upsert(session, ProfileRow, values, ["model_id", "seq_len", "calibration_kind"])


def check_geometry(session: Session, profile: ModelAttentionProfile, model_id_: int) -> None:
    """Check a profile's layer and head indices against its model's geometry."""
    model = model_info(session.get_one(ModelRow, model_id_))
    profile.check_geometry(model.num_layers, model.num_q_heads, model=model.name)


class ProfileMethods(StoreBase):
    """`ProfileStore`'s methods on profiles."""

    def save_profile(
        self,
        model: str,
        seq_len: int | str,
        config: ModelAttentionProfile | SampleAttentionConfig | Mapping[str, Any],
        *,
        calibration_kind: str | None = None,
        metrics: TrialMetrics | Mapping[str, Any] | None = None,
        run: RunInfo | str | int | None = None,
        device: str | None = None,
        env: Mapping[str, Any] | None = None,
    ) -> ProfileRecord:
        """Insert or replace the profile of (model, seq_len, calibration kind): an upsert.

        ``config`` is validated as a `ModelAttentionProfile` (a bare `SampleAttentionConfig`
        becomes its global config) and its layer and head indices are checked against the
        model's geometry. ``calibration_kind`` defaults to the run's (and must agree with it);
        ``env`` and ``device`` default to the run's, or to `collect_env()` without a run.
        """
        length = parse_length(seq_len)
        profile = as_profile(config)
        now = utcnow()
        with self._session(write=True) as session:
            found_model = model_id(session, model, self._where)
            check_geometry(session, profile, found_model)
            row = run_row(session, run, self._where) if run is not None else None
            if row is not None:
                if row.model_id != found_model:
                    raise ValueError(f"run {row.name!r} is not a run of model {model!r}")
                if calibration_kind is not None and calibration_kind != row.calibration_kind:
                    raise ValueError(
                        f"calibration_kind={calibration_kind!r} but run {row.name!r} was calibrated "
                        f"on {row.calibration_kind!r} data"
                    )
                calibration_kind = row.calibration_kind
                env = row.env if env is None else env
                device = row.device if device is None else device
            if calibration_kind is None:
                raise ValueError("calibration_kind ('real' or 'synthetic') is required for a profile without a run")
            env_info, device = environment(env, device)
            record = ProfileRecord(
                model=model,
                seq_len=length,
                calibration_kind=calibration_kind,
                config=profile,
                metrics=metrics if metrics is not None else TrialMetrics(),
                run=row.name if row is not None else None,
                device=device,
                env=env_info,
                created_at=now,
                updated_at=now,
            )
            write_profile(session, record, found_model, row.id if row is not None else None)
        return record

    def resolve_profile(
        self,
        model: str,
        seq_len: int | str,
        *,
        allow_synthetic: bool = False,
        far_ratio: float = DEFAULT_FAR_RATIO,
    ) -> tuple[ProfileRecord, BucketChoice]:
        """Like `get_profile`, and also return the bucket rule's choice (no warning here)."""
        length = parse_length(seq_len)
        with self._session() as session:
            model_row = session.execute(select(ModelRow).where(ModelRow.name == model)).scalar()
            if model_row is None:
                raise ProfileNotFoundError(
                    f"no profile for model {model!r}: the store at {self._where} does not know it "
                    f"(models: {', '.join(model_names(session)) or 'none'}). Tune it: "
                    f"sattn-tune --model {model} --lengths {format_length(length)}"
                )
            rows = session.execute(
                select(ProfileRow, RunRow.name)
                .outerjoin(RunRow, ProfileRow.run_id == RunRow.id)
                .where(ProfileRow.model_id == model_row.id)
            ).all()
            records = [profile_record(row, model, run_name) for row, run_name in rows]
        real = [r for r in records if r.calibration_kind == "real"]
        synthetic = [r for r in records if r.calibration_kind == "synthetic"]
        if real:
            candidates = real
        elif synthetic and allow_synthetic:
            candidates = synthetic
        elif synthetic:
            raise ProfileNotFoundError(
                f"model {model!r} has only profiles tuned on synthetic calibration data (at "
                f"{', '.join(format_length(r.seq_len) for r in sorted(synthetic, key=lambda r: r.seq_len))}); "
                "they are dry-run results, not tuned on real text. Tune on real data "
                f"(sattn-tune --model {model}), or pass allow_synthetic=True (--allow-synthetic) to use them"
            )
        else:
            raise ProfileNotFoundError(
                f"model {model!r} has no profile in the store at {self._where}; tune it: "
                f"sattn-tune --model {model} --lengths {format_length(length)}"
            )
        choice = choose_bucket((r.seq_len for r in candidates), length, far_ratio=far_ratio)
        assert choice is not None
        profile = next(r for r in candidates if r.seq_len == choice.length)
        return profile, choice

    def get_profile(
        self,
        model: str,
        seq_len: int | str,
        *,
        allow_synthetic: bool = False,
        far_ratio: float = DEFAULT_FAR_RATIO,
    ) -> ProfileRecord:
        """The profile to use for ``model`` at ``seq_len`` tokens, by the bucket rule.

        Among the model's profiles tuned on real calibration data: the one at the largest tuned
        length not above ``seq_len``, else at the smallest above it (`choose_bucket`). A
        `ProfileDistanceWarning` is emitted when that length differs from ``seq_len`` by more
        than ``far_ratio`` (2x). Profiles tuned on synthetic data are used only with
        ``allow_synthetic=True``, and only when the model has no real one.

        Raises:
            ProfileNotFoundError: the model is unknown, has no profile, or only synthetic ones
                (the message says which, and what to do).
        """
        profile, choice = self.resolve_profile(model, seq_len, allow_synthetic=allow_synthetic, far_ratio=far_ratio)
        if choice.far:
            warnings.warn(
                f"using the profile of {model} tuned at {format_length(choice.length)} for a length of "
                f"{format_length(choice.requested)} ({choice.ratio:.1f}x away); tune that length for "
                f"better parameters: sattn-tune --model {model} --lengths {format_length(choice.requested)}",
                ProfileDistanceWarning,
                stacklevel=2,
            )
        return profile

    def list_profiles(self, model: str | None = None, *, calibration_kind: str | None = None) -> list[ProfileRecord]:
        """Profiles by model, length and calibration kind (of one model or all)."""
        with self._session() as session:
            query = (
                select(ProfileRow, ModelRow.name, RunRow.name)
                .join(ModelRow, ProfileRow.model_id == ModelRow.id)
                .outerjoin(RunRow, ProfileRow.run_id == RunRow.id)
            )
            if model is not None:
                query = query.where(ProfileRow.model_id == model_id(session, model, self._where))
            if calibration_kind is not None:
                query = query.where(ProfileRow.calibration_kind == calibration_kind)
            query = query.order_by(ModelRow.name, ProfileRow.seq_len, ProfileRow.calibration_kind)
            return [profile_record(row, name, run) for row, name, run in session.execute(query).all()]

    def delete_profile(
        self, model: str, seq_len: int | str | None = None, *, calibration_kind: str | None = None
    ) -> int:
        """Delete a model's profiles (at one length / of one calibration kind); returns how many."""
        with self._session(write=True) as session:
            query = delete(ProfileRow).where(ProfileRow.model_id == model_id(session, model, self._where))
            if seq_len is not None:
                query = query.where(ProfileRow.seq_len == parse_length(seq_len))
            if calibration_kind is not None:
                query = query.where(ProfileRow.calibration_kind == calibration_kind)
            return int(session.execute(query).rowcount or 0)
