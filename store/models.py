"""SQLAlchemy 2 ORM models of the profile store (the schema at the head revision).

Four tables, all prefixed ``sattn_`` so that the store can share a database with Optuna's RDB
storage (which owns ``studies``, ``trials``, ``alembic_version``...). The schema version lives in
Alembic's version table, named ``sattn_alembic_version`` for the same reason.

=================  =====================================================  =========================
table              natural key (named unique constraint)                  foreign keys
=================  =====================================================  =========================
sattn_models       name (``uq_sattn_models_name``)
sattn_runs         name (``uq_sattn_runs_name``)                          model -> models, cascade
sattn_trials       run, study, number (``uq_sattn_trials_run_study_number``)  run -> runs, cascade
sattn_profiles     model, seq_len, calibration_kind                       model -> models, cascade;
                   (``uq_sattn_profiles_natural_key``)                    run -> runs, set null
=================  =====================================================  =========================

JSON columns hold only what the pydantic schemas of `sampleattn.store.schemas` validated;
nothing is pickled. Changing this file means writing a migration in ``migrations/versions``
(``tests/store/test_store_migrations.py`` checks that they agree).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

__all__ = ["Base", "JSONType", "ModelRow", "ProfileRow", "RunRow", "TrialRow", "UTCDateTime"]

#: Constraint names, so that migrations (and SQLite batch mode) can refer to them.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

#: JSON on every backend, JSONB on PostgreSQL; Python ``None`` is stored as SQL NULL.
JSONType = JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")


class UTCDateTime(TypeDecorator):
    """A timezone-aware UTC datetime on every backend (SQLite stores it naive, in UTC)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        value = value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


class Base(DeclarativeBase):
    """Declarative base of the store's tables."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class ModelRow(Base):
    """A model: identity and attention geometry."""

    __tablename__ = "sattn_models"
    __table_args__ = (UniqueConstraint("name", name="uq_sattn_models_name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    hf_id: Mapped[str | None] = mapped_column(String(512))
    family: Mapped[str | None] = mapped_column(String(64))
    num_layers: Mapped[int] = mapped_column(Integer)
    num_q_heads: Mapped[int] = mapped_column(Integer)
    num_kv_heads: Mapped[int] = mapped_column(Integer)
    head_dim: Mapped[int] = mapped_column(Integer)
    trained_context: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class RunRow(Base):
    """A tuning run."""

    __tablename__ = "sattn_runs"
    __table_args__ = (
        UniqueConstraint("name", name="uq_sattn_runs_name"),
        CheckConstraint("status IN ('running', 'complete', 'failed', 'interrupted')", name="status"),
        CheckConstraint("calibration_kind IN ('real', 'synthetic')", name="calibration_kind"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(255))
    model_id: Mapped[int] = mapped_column(ForeignKey("sattn_models.id", ondelete="CASCADE"), index=True)
    lengths: Mapped[list[int]] = mapped_column(JSONType)
    objective: Mapped[str] = mapped_column(String(32))
    max_error: Mapped[float | None] = mapped_column(Float)
    min_retained_mass: Mapped[float | None] = mapped_column(Float)
    calibration_kind: Mapped[str] = mapped_column(String(16))
    calibration_source: Mapped[str] = mapped_column(String(1024))
    calibration_fingerprint: Mapped[str | None] = mapped_column(String(128))
    calibration_samples: Mapped[int | None] = mapped_column(Integer)
    search_space: Mapped[dict[str, Any]] = mapped_column(JSONType)
    sampler: Mapped[str | None] = mapped_column(String(64))
    seed: Mapped[int | None] = mapped_column(BigInteger)
    device: Mapped[str | None] = mapped_column(String(255))
    # Added by revision 0002.
    host: Mapped[str | None] = mapped_column(String(255))
    env: Mapped[dict[str, Any]] = mapped_column(JSONType)
    attrs: Mapped[dict[str, Any]] = mapped_column(JSONType)
    status: Mapped[str] = mapped_column(String(16))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class TrialRow(Base):
    """One evaluated configuration of a run, with its metrics."""

    __tablename__ = "sattn_trials"
    __table_args__ = (
        UniqueConstraint("run_id", "study", "number", name="uq_sattn_trials_run_study_number"),
        CheckConstraint("state IN ('running', 'complete', 'pruned', 'failed')", name="state"),
        # Added by revision 0002: the Pareto query filters on these.
        Index("ix_sattn_trials_run_seq_len_state", "run_id", "seq_len", "state"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("sattn_runs.id", ondelete="CASCADE"))
    study: Mapped[str] = mapped_column(String(255))
    number: Mapped[int] = mapped_column(Integer)
    seq_len: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16))
    params: Mapped[dict[str, Any]] = mapped_column(JSONType)
    config: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    rel_error: Mapped[float | None] = mapped_column(Float)
    retained_mass_mean: Mapped[float | None] = mapped_column(Float)
    retained_mass_min: Mapped[float | None] = mapped_column(Float)
    density: Mapped[float | None] = mapped_column(Float)
    latency_ms: Mapped[float | None] = mapped_column(Float)
    dense_latency_ms: Mapped[float | None] = mapped_column(Float)
    speedup: Mapped[float | None] = mapped_column(Float)
    latency_measured: Mapped[bool | None] = mapped_column(Boolean(create_constraint=False))
    extra_metrics: Mapped[dict[str, Any]] = mapped_column(JSONType)
    worker: Mapped[str | None] = mapped_column(String(255))
    device: Mapped[str | None] = mapped_column(String(255))
    duration_s: Mapped[float | None] = mapped_column(Float)
    error_message: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class ProfileRow(Base):
    """The configuration chosen for (model, tuned length, calibration kind)."""

    __tablename__ = "sattn_profiles"
    __table_args__ = (
        UniqueConstraint("model_id", "seq_len", "calibration_kind", name="uq_sattn_profiles_natural_key"),
        CheckConstraint("calibration_kind IN ('real', 'synthetic')", name="calibration_kind"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("sattn_models.id", ondelete="CASCADE"))
    seq_len: Mapped[int] = mapped_column(Integer)
    calibration_kind: Mapped[str] = mapped_column(String(16))
    config: Mapped[dict[str, Any]] = mapped_column(JSONType)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSONType)
    run_id: Mapped[int | None] = mapped_column(ForeignKey("sattn_runs.id", ondelete="SET NULL"), index=True)
    device: Mapped[str | None] = mapped_column(String(255))
    env: Mapped[dict[str, Any]] = mapped_column(JSONType)
    content_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
