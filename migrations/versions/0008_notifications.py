"""Notification outbox (HL7 v2 and FHIR messages of result versions); DICOMweb destinations.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06

- ``notifications``: one row per (result version, ``[[notify]]`` receiver), written with the
  result version; claimed, retried and recorded like the outbox.
- ``notification_attempts``: one row per try (the receiver's ACK code or HTTP status, why it
  failed).
- ``outbox.url``: the STOW-RS URL of a destination of kind ``dicomweb`` (NULL for DIMSE).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "notifications",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("study_result_id", sa.Integer(), nullable=False),
        sa.Column("target", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("claim_token", sa.String(length=32), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["study_result_id"],
            ["study_results.id"],
            name=op.f("fk_notifications_study_result_id_study_results"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notifications")),
    )
    op.create_index(
        "ix_notifications_status_next_attempt_at", "notifications", ["status", "next_attempt_at"]
    )
    op.create_index("ix_notifications_study_result_id", "notifications", ["study_result_id"])
    op.create_table(
        "notification_attempts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("notification_id", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("response", sa.String(length=64), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["notification_id"],
            ["notifications.id"],
            name=op.f("fk_notification_attempts_notification_id_notifications"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notification_attempts")),
    )
    op.create_index(
        "ix_notification_attempts_notification_id", "notification_attempts", ["notification_id"]
    )
    with op.batch_alter_table("outbox") as batch:
        batch.add_column(sa.Column("url", sa.String(length=1024), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("outbox") as batch:
        batch.drop_column("url")
    op.drop_index("ix_notification_attempts_notification_id", "notification_attempts")
    op.drop_table("notification_attempts")
    op.drop_index("ix_notifications_study_result_id", "notifications")
    op.drop_index("ix_notifications_status_next_attempt_at", "notifications")
    op.drop_table("notifications")
