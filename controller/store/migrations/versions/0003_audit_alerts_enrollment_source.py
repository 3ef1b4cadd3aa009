"""audit alerts (tampered ranges and their clearing), devices' enrollment source and
certificate issue time

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29 06:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "audit_alerts",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("chain", sa.String(length=64), nullable=False),
        sa.Column("first_seq", sa.Integer(), nullable=False),
        sa.Column("last_seq", sa.Integer(), nullable=False),
        sa.Column("reason", sa.String(length=1024), nullable=False),
        sa.Column("detected_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("cleared_by", sa.String(length=128), nullable=False),
        sa.Column("cleared_reason", sa.String(length=1024), nullable=False),
        sa.Column("cleared_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("audit_alerts", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_audit_alerts_chain"), ["chain"], unique=False)
    # A chain flagged before alerts had ranges: its whole stored history is the suspect
    # range, until an operator clears it.
    op.execute(
        "insert into audit_alerts (chain, first_seq, last_seq, reason, detected_at, "
        "cleared_by, cleared_reason) select chain, 1, last_seq, tamper_reason, "
        "current_timestamp, '', '' from audit_heads where tamper_alert"
    )
    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("enrolled_from", sa.String(length=64), nullable=False, server_default="")
        )
        batch_op.create_index(batch_op.f("ix_devices_enrolled_from"), ["enrolled_from"])
        batch_op.add_column(
            sa.Column("certificate_issued_at", sa.DateTime(timezone=True), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.drop_column("certificate_issued_at")
        batch_op.drop_index(batch_op.f("ix_devices_enrolled_from"))
        batch_op.drop_column("enrolled_from")
    with op.batch_alter_table("audit_alerts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_audit_alerts_chain"))
    op.drop_table("audit_alerts")
