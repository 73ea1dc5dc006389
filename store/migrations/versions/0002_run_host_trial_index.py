"""Record the tuning driver's host on runs; index trials for the Pareto query.

Runs of one model often come from several machines (a workstation for a dry run, an H200 node
for the real one); ``host`` tells them apart where ``device`` alone does not. The Pareto
query selects a model's complete trials at one length: the index on (run_id, seq_len, state)
serves it without scanning every trial of the run.

Revision ID: 0002
Revises: 0001
Create Date: 2025-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("sattn_runs") as batch:
        batch.add_column(sa.Column("host", sa.String(255), nullable=True))
    op.create_index("ix_sattn_trials_run_seq_len_state", "sattn_trials", ["run_id", "seq_len", "state"])


def downgrade() -> None:
    op.drop_index("ix_sattn_trials_run_seq_len_state", table_name="sattn_trials")
    with op.batch_alter_table("sattn_runs") as batch:
        batch.drop_column("host")
