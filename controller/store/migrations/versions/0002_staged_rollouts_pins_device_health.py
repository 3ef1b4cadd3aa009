"""staged rollouts, pins, device health

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28 14:10:13.484985
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "pins",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("model_name", sa.String(length=64), nullable=False),
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("device_id", sa.String(length=64), nullable=False),
        sa.Column("selector", sa.JSON(), nullable=False),
        sa.Column("selector_key", sa.String(length=512), nullable=False),
        sa.Column("created_by", sa.String(length=128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("model_name", "device_id", "selector_key"),
    )
    with op.batch_alter_table("pins", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_pins_model_name"), ["model_name"], unique=False)

    op.create_table(
        "rollout_targets",
        sa.Column("rollout_id", sa.Integer(), nullable=False),
        sa.Column("device_id", sa.String(length=64), nullable=False),
        sa.Column("wave", sa.Integer(), nullable=False),
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("previous_version", sa.String(length=64), nullable=False),
        sa.Column("baseline_tokens_per_second", sa.Float(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.String(length=1024), nullable=False),
        sa.Column("assigned_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("judged_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["device_id"],
            ["devices.device_id"],
        ),
        sa.ForeignKeyConstraint(
            ["rollout_id"],
            ["rollouts.id"],
        ),
        sa.PrimaryKeyConstraint("rollout_id", "device_id"),
    )
    with op.batch_alter_table("rollout_targets", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_rollout_targets_device_id"), ["device_id"], unique=False
        )

    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("audit_head_seq", sa.BigInteger(), nullable=False, server_default="0")
        )
        batch_op.add_column(sa.Column("health", sa.JSON(), nullable=False, server_default="[]"))

    with op.batch_alter_table("rollouts", schema=None) as batch_op:
        # Rollouts made before waves assigned every device at once: they are complete.
        batch_op.add_column(
            sa.Column("state", sa.String(length=16), nullable=False, server_default="completed")
        )
        batch_op.add_column(sa.Column("strategy", sa.JSON(), nullable=False, server_default="{}"))
        batch_op.add_column(sa.Column("waves", sa.Integer(), nullable=False, server_default="1"))
        batch_op.add_column(
            sa.Column("current_wave", sa.Integer(), nullable=False, server_default="0")
        )
        batch_op.add_column(
            sa.Column("wave_healthy_since", sa.DateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(
            sa.Column("reason", sa.String(length=1024), nullable=False, server_default="")
        )
        batch_op.create_index(batch_op.f("ix_rollouts_state"), ["state"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("rollouts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_rollouts_state"))
        batch_op.drop_column("reason")
        batch_op.drop_column("wave_healthy_since")
        batch_op.drop_column("current_wave")
        batch_op.drop_column("waves")
        batch_op.drop_column("strategy")
        batch_op.drop_column("state")

    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.drop_column("health")
        batch_op.drop_column("audit_head_seq")

    with op.batch_alter_table("rollout_targets", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_rollout_targets_device_id"))

    op.drop_table("rollout_targets")
    with op.batch_alter_table("pins", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_pins_model_name"))

    op.drop_table("pins")
