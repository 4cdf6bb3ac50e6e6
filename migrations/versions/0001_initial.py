"""Initial schema: the queue (studies, series, instances), predictions, results, outbox.

Revision ID: 0001
Revises:
Create Date: 2026-11-29

A revision is a record of the schema at its time, so it spells its columns itself and does not
import ichnode's models or labels: the probability columns below are the six RSNA labels as
they were when this revision was written. A change to ``ichnode.subtypes.SUBTYPES`` needs a new
revision (the migrations-equal-models test fails until there is one).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: The label order of ichnode.subtypes.SUBTYPES at this revision.
_SUBTYPES_0001 = (
    "epidural",
    "intraparenchymal",
    "intraventricular",
    "subarachnoid",
    "subdural",
    "any",
)


def _time(name: str, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _status(name: str = "status") -> sa.Column:
    """String enums are stored as VARCHAR(16) holding the member values."""
    return sa.Column(name, sa.String(length=16), nullable=False)


def _probabilities(nullable: bool) -> list[sa.Column]:
    return [sa.Column(f"p_{label}", sa.Float(), nullable=nullable) for label in _SUBTYPES_0001]


def _counter(name: str, default: int = 0) -> sa.Column:
    return sa.Column(name, sa.Integer(), server_default=sa.text(str(default)), nullable=False)


def upgrade() -> None:
    op.create_table(
        "associations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("calling_ae", sa.String(length=16), nullable=True),
        sa.Column("called_ae", sa.String(length=16), nullable=True),
        sa.Column("peer_address", sa.String(length=64), nullable=True),
        sa.Column("peer_port", sa.Integer(), nullable=True),
        _time("started_at"),
        _time("ended_at", nullable=True),
        _counter("n_received"),
        _counter("n_failed"),
        sa.Column("outcome", sa.String(length=256), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_associations")),
    )

    op.create_table(
        "studies",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("study_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("patient_id", sa.String(length=64), nullable=True),
        sa.Column("patient_name", sa.String(length=324), nullable=True),
        sa.Column("accession_number", sa.String(length=64), nullable=True),
        sa.Column("study_date", sa.String(length=8), nullable=True),
        sa.Column("study_description", sa.String(length=256), nullable=True),
        sa.Column("calling_ae", sa.String(length=16), nullable=True),
        _time("first_received_at"),
        _time("last_received_at"),
        _status(),
        _counter("result_version"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_studies")),
        sa.UniqueConstraint("study_instance_uid", name=op.f("uq_studies_study_instance_uid")),
    )
    op.create_index("ix_studies_last_received_at", "studies", ["last_received_at"])

    op.create_table(
        "series",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("study_id", sa.Integer(), nullable=False),
        sa.Column("series_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("modality", sa.String(length=16), nullable=True),
        sa.Column("series_description", sa.String(length=256), nullable=True),
        sa.Column("body_part", sa.String(length=64), nullable=True),
        _time("created_at"),
        sa.ForeignKeyConstraint(
            ["study_id"],
            ["studies.id"],
            name=op.f("fk_series_study_id_studies"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_series")),
        sa.UniqueConstraint("series_instance_uid", name=op.f("uq_series_series_instance_uid")),
    )
    op.create_index("ix_series_study_id", "series", ["study_id"])

    op.create_table(
        "instances",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("study_id", sa.Integer(), nullable=False),
        sa.Column("series_id", sa.Integer(), nullable=False),
        sa.Column("sop_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("sop_class_uid", sa.String(length=64), nullable=False),
        sa.Column("transfer_syntax_uid", sa.String(length=64), nullable=False),
        sa.Column("path", sa.String(length=512), nullable=True),
        sa.Column("size_bytes", sa.Integer(), nullable=True),
        sa.Column("z", sa.Float(), nullable=True),
        sa.Column("instance_number", sa.Integer(), nullable=True),
        _status(),
        sa.Column("reason", sa.Text(), nullable=True),
        _time("received_at"),
        _counter("times_received", default=1),
        sa.Column("claimed_by", sa.String(length=128), nullable=True),
        sa.Column("claim_token", sa.String(length=32), nullable=True),
        _time("lease_expires_at", nullable=True),
        _counter("attempts"),
        _time("completed_at", nullable=True),
        sa.ForeignKeyConstraint(
            ["series_id"],
            ["series.id"],
            name=op.f("fk_instances_series_id_series"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["study_id"],
            ["studies.id"],
            name=op.f("fk_instances_study_id_studies"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_instances")),
        sa.UniqueConstraint("sop_instance_uid", name=op.f("uq_instances_sop_instance_uid")),
    )
    op.create_index("ix_instances_series_id", "instances", ["series_id"])
    op.create_index(
        "ix_instances_status_lease_expires_at", "instances", ["status", "lease_expires_at"]
    )
    op.create_index("ix_instances_study_id", "instances", ["study_id"])

    op.create_table(
        "predictions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("instance_id", sa.Integer(), nullable=False),
        sa.Column("model_id", sa.String(length=64), nullable=False),
        _time("created_at"),
        *_probabilities(nullable=False),
        sa.ForeignKeyConstraint(
            ["instance_id"],
            ["instances.id"],
            name=op.f("fk_predictions_instance_id_instances"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_predictions")),
        sa.UniqueConstraint(
            "instance_id", "model_id", name=op.f("uq_predictions_instance_id_model_id")
        ),
    )

    op.create_table(
        "study_results",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("study_id", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("model_id", sa.String(length=64), nullable=False),
        sa.Column("flagged", sa.Boolean(), nullable=False),
        sa.Column("flagged_subtypes", sa.String(length=256), nullable=False),
        sa.Column("key_instance_id", sa.Integer(), nullable=True),
        sa.Column("n_instances", sa.Integer(), nullable=False),
        sa.Column("n_scored", sa.Integer(), nullable=False),
        sa.Column("n_failed", sa.Integer(), nullable=False),
        sa.Column("n_skipped", sa.Integer(), nullable=False),
        _time("created_at"),
        *_probabilities(nullable=True),
        sa.ForeignKeyConstraint(
            ["key_instance_id"],
            ["instances.id"],
            name=op.f("fk_study_results_key_instance_id_instances"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["study_id"],
            ["studies.id"],
            name=op.f("fk_study_results_study_id_studies"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_study_results")),
        sa.UniqueConstraint("study_id", "version", name=op.f("uq_study_results_study_id_version")),
    )

    op.create_table(
        "outbox",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("study_result_id", sa.Integer(), nullable=False),
        sa.Column("destination", sa.String(length=64), nullable=False),
        sa.Column("ae_title", sa.String(length=16), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("port", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("sop_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("path", sa.String(length=512), nullable=False),
        _status(),
        _counter("attempts"),
        _time("next_attempt_at"),
        sa.Column("last_error", sa.Text(), nullable=True),
        _time("created_at"),
        _time("sent_at", nullable=True),
        sa.ForeignKeyConstraint(
            ["study_result_id"],
            ["study_results.id"],
            name=op.f("fk_outbox_study_result_id_study_results"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outbox")),
    )
    op.create_index("ix_outbox_status_next_attempt_at", "outbox", ["status", "next_attempt_at"])
    op.create_index("ix_outbox_study_result_id", "outbox", ["study_result_id"])

    op.create_table(
        "delivery_attempts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("outbox_id", sa.Integer(), nullable=False),
        _time("at"),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["outbox_id"],
            ["outbox.id"],
            name=op.f("fk_delivery_attempts_outbox_id_outbox"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_delivery_attempts")),
    )
    op.create_index("ix_delivery_attempts_outbox_id", "delivery_attempts", ["outbox_id"])


def downgrade() -> None:
    for table in (
        "delivery_attempts",
        "outbox",
        "study_results",
        "predictions",
        "instances",
        "series",
        "studies",
        "associations",
    ):
        op.drop_table(table)
