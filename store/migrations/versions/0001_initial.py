"""First schema: models, runs, trials, profiles.

Revision ID: 0001
Revises:
Create Date: 2025-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

JSON = sa.JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")


def _timestamp(name: str, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "sattn_models",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("hf_id", sa.String(512), nullable=True),
        sa.Column("family", sa.String(64), nullable=True),
        sa.Column("num_layers", sa.Integer(), nullable=False),
        sa.Column("num_q_heads", sa.Integer(), nullable=False),
        sa.Column("num_kv_heads", sa.Integer(), nullable=False),
        sa.Column("head_dim", sa.Integer(), nullable=False),
        sa.Column("trained_context", sa.Integer(), nullable=True),
        _timestamp("created_at"),
        _timestamp("updated_at"),
        sa.PrimaryKeyConstraint("id", name="pk_sattn_models"),
        sa.UniqueConstraint("name", name="uq_sattn_models_name"),
    )
    op.create_table(
        "sattn_runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("lengths", JSON, nullable=False),
        sa.Column("objective", sa.String(32), nullable=False),
        sa.Column("max_error", sa.Float(), nullable=True),
        sa.Column("min_retained_mass", sa.Float(), nullable=True),
        sa.Column("calibration_kind", sa.String(16), nullable=False),
        sa.Column("calibration_source", sa.String(1024), nullable=False),
        sa.Column("calibration_fingerprint", sa.String(128), nullable=True),
        sa.Column("calibration_samples", sa.Integer(), nullable=True),
        sa.Column("search_space", JSON, nullable=False),
        sa.Column("sampler", sa.String(64), nullable=True),
        sa.Column("seed", sa.BigInteger(), nullable=True),
        sa.Column("device", sa.String(255), nullable=True),
        sa.Column("env", JSON, nullable=False),
        sa.Column("attrs", JSON, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        _timestamp("started_at"),
        _timestamp("finished_at", nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_sattn_runs"),
        sa.UniqueConstraint("name", name="uq_sattn_runs_name"),
        sa.ForeignKeyConstraint(
            ["model_id"], ["sattn_models.id"], name="fk_sattn_runs_model_id_sattn_models", ondelete="CASCADE"
        ),
        sa.CheckConstraint(
            "status IN ('running', 'complete', 'failed', 'interrupted')", name="ck_sattn_runs_status"
        ),
        sa.CheckConstraint("calibration_kind IN ('real', 'synthetic')", name="ck_sattn_runs_calibration_kind"),
    )
    op.create_index("ix_sattn_runs_model_id", "sattn_runs", ["model_id"])
    op.create_table(
        "sattn_trials",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("study", sa.String(255), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("seq_len", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("params", JSON, nullable=False),
        sa.Column("config", JSON, nullable=True),
        sa.Column("rel_error", sa.Float(), nullable=True),
        sa.Column("retained_mass_mean", sa.Float(), nullable=True),
        sa.Column("retained_mass_min", sa.Float(), nullable=True),
        sa.Column("density", sa.Float(), nullable=True),
        sa.Column("latency_ms", sa.Float(), nullable=True),
        sa.Column("dense_latency_ms", sa.Float(), nullable=True),
        sa.Column("speedup", sa.Float(), nullable=True),
        sa.Column("latency_measured", sa.Boolean(create_constraint=False), nullable=True),
        sa.Column("extra_metrics", JSON, nullable=False),
        sa.Column("worker", sa.String(255), nullable=True),
        sa.Column("device", sa.String(255), nullable=True),
        sa.Column("duration_s", sa.Float(), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        _timestamp("created_at"),
        _timestamp("updated_at"),
        sa.PrimaryKeyConstraint("id", name="pk_sattn_trials"),
        sa.UniqueConstraint("run_id", "study", "number", name="uq_sattn_trials_run_study_number"),
        sa.ForeignKeyConstraint(
            ["run_id"], ["sattn_runs.id"], name="fk_sattn_trials_run_id_sattn_runs", ondelete="CASCADE"
        ),
        sa.CheckConstraint("state IN ('running', 'complete', 'pruned', 'failed')", name="ck_sattn_trials_state"),
    )
    op.create_table(
        "sattn_profiles",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("seq_len", sa.Integer(), nullable=False),
        sa.Column("calibration_kind", sa.String(16), nullable=False),
        sa.Column("config", JSON, nullable=False),
        sa.Column("metrics", JSON, nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=True),
        sa.Column("device", sa.String(255), nullable=True),
        sa.Column("env", JSON, nullable=False),
        sa.Column("content_hash", sa.String(64), nullable=False),
        _timestamp("created_at"),
        _timestamp("updated_at"),
        sa.PrimaryKeyConstraint("id", name="pk_sattn_profiles"),
        sa.UniqueConstraint("model_id", "seq_len", "calibration_kind", name="uq_sattn_profiles_natural_key"),
        sa.ForeignKeyConstraint(
            ["model_id"], ["sattn_models.id"], name="fk_sattn_profiles_model_id_sattn_models", ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["run_id"], ["sattn_runs.id"], name="fk_sattn_profiles_run_id_sattn_runs", ondelete="SET NULL"
        ),
        sa.CheckConstraint(
            "calibration_kind IN ('real', 'synthetic')", name="ck_sattn_profiles_calibration_kind"
        ),
    )
    op.create_index("ix_sattn_profiles_run_id", "sattn_profiles", ["run_id"])


def downgrade() -> None:
    op.drop_index("ix_sattn_profiles_run_id", table_name="sattn_profiles")
    op.drop_table("sattn_profiles")
    op.drop_table("sattn_trials")
    op.drop_index("ix_sattn_runs_model_id", table_name="sattn_runs")
    op.drop_table("sattn_runs")
    op.drop_table("sattn_models")
