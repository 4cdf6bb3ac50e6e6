"""Report objects get their own table; the sender's address is kept on the study; the
reporter claims result versions under a lease.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06

- ``report_objects``: one row per object built for a result version (kind, SOP class, series,
  SOP instance, stored path). Before, the outbox rows were the only record of what was built,
  one copy per destination and per resend. The rows are made from today's outbox rows: one per
  distinct SOP instance, its series read from the stored path (``study/series/sop.dcm``), its
  SOP class from its kind.
- ``outbox.report_object_id`` replaces the object columns copied into every outbox row
  (``study_result_id``, ``kind``, ``sop_instance_uid``, ``path``).
- ``studies.calling_address``: the address the study came from, written at receive time. The
  return-to-sender target was looked up in the ``associations`` audit rows, which the audit
  pruner deletes; studies that exist now get the address that lookup finds.
- ``study_results.report_claim_token`` and ``report_lease_expires_at``: a reporter claims a
  pending version for a lease instead of holding its row lock for the whole build.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: The SOP class of each kind of object ichnode builds (frozen here as of this revision).
SOP_CLASS_OF_KIND = {
    "sr": "1.2.840.10008.5.1.4.1.1.88.33",  # Comprehensive SR
    "summary": "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture Image
    "kos": "1.2.840.10008.5.1.4.1.1.88.59",  # Key Object Selection Document
}

_outbox = sa.table(
    "outbox",
    sa.column("id", sa.Integer()),
    sa.column("study_result_id", sa.Integer()),
    sa.column("kind", sa.String()),
    sa.column("sop_instance_uid", sa.String()),
    sa.column("path", sa.String()),
    sa.column("created_at", sa.DateTime(timezone=True)),
    sa.column("report_object_id", sa.Integer()),
)
_objects = sa.table(
    "report_objects",
    sa.column("id", sa.Integer()),
    sa.column("study_result_id", sa.Integer()),
    sa.column("kind", sa.String()),
    sa.column("sop_class_uid", sa.String()),
    sa.column("series_instance_uid", sa.String()),
    sa.column("sop_instance_uid", sa.String()),
    sa.column("path", sa.String()),
    sa.column("created_at", sa.DateTime(timezone=True)),
)
_studies = sa.table(
    "studies",
    sa.column("id", sa.Integer()),
    sa.column("calling_ae", sa.String()),
    sa.column("calling_address", sa.String()),
    sa.column("last_received_at", sa.DateTime(timezone=True)),
)
_associations = sa.table(
    "associations",
    sa.column("id", sa.Integer()),
    sa.column("calling_ae", sa.String()),
    sa.column("peer_address", sa.String()),
    sa.column("outcome", sa.String()),
    sa.column("started_at", sa.DateTime(timezone=True)),
)


def upgrade() -> None:
    op.create_table(
        "report_objects",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("study_result_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("sop_class_uid", sa.String(length=64), nullable=False),
        sa.Column("series_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("sop_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("path", sa.String(length=512), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["study_result_id"],
            ["study_results.id"],
            name=op.f("fk_report_objects_study_result_id_study_results"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_report_objects")),
        sa.UniqueConstraint("sop_instance_uid", name=op.f("uq_report_objects_sop_instance_uid")),
    )
    op.create_index("ix_report_objects_study_result_id", "report_objects", ["study_result_id"])
    with op.batch_alter_table("outbox") as batch:
        batch.add_column(sa.Column("report_object_id", sa.Integer(), nullable=True))
    _objects_from_outbox()
    with op.batch_alter_table("outbox") as batch:
        batch.alter_column("report_object_id", existing_type=sa.Integer(), nullable=False)
        batch.create_foreign_key(
            op.f("fk_outbox_report_object_id_report_objects"),
            "report_objects",
            ["report_object_id"],
            ["id"],
            ondelete="CASCADE",
        )
        batch.create_index("ix_outbox_report_object_id", ["report_object_id"])
        batch.drop_index("ix_outbox_study_result_id")
        batch.drop_constraint("fk_outbox_study_result_id_study_results", type_="foreignkey")
        batch.drop_column("study_result_id")
        batch.drop_column("kind")
        batch.drop_column("sop_instance_uid")
        batch.drop_column("path")

    with op.batch_alter_table("studies") as batch:
        batch.add_column(sa.Column("calling_address", sa.String(length=64), nullable=True))
    _addresses_from_audit()

    with op.batch_alter_table("study_results") as batch:
        batch.add_column(sa.Column("report_claim_token", sa.String(length=32), nullable=True))
        batch.add_column(
            sa.Column("report_lease_expires_at", sa.DateTime(timezone=True), nullable=True)
        )


def _objects_from_outbox() -> None:
    """One report object per distinct SOP instance of today's outbox rows; point them at it."""
    bind = op.get_bind()
    rows = bind.execute(
        sa.select(
            _outbox.c.study_result_id,
            _outbox.c.kind,
            _outbox.c.sop_instance_uid,
            _outbox.c.path,
            sa.func.min(_outbox.c.created_at),
        )
        .group_by(
            _outbox.c.study_result_id, _outbox.c.kind, _outbox.c.sop_instance_uid, _outbox.c.path
        )
        .order_by(sa.func.min(_outbox.c.id))
    ).all()
    objects = []
    seen: set[str] = set()
    for result_id, kind, sop_uid, path, created_at in rows:
        if sop_uid in seen:  # one object; rows differing in their copies keep the first
            continue
        seen.add(sop_uid)
        parts = path.split("/")
        objects.append(
            {
                "study_result_id": result_id,
                "kind": kind,
                "sop_class_uid": SOP_CLASS_OF_KIND.get(kind, ""),
                "series_instance_uid": parts[1] if len(parts) == 3 else "",
                "sop_instance_uid": sop_uid,
                "path": path,
                "created_at": created_at,
            }
        )
    if objects:
        bind.execute(sa.insert(_objects), objects)
    bind.execute(
        sa.update(_outbox).values(
            report_object_id=sa.select(_objects.c.id)
            .where(_objects.c.sop_instance_uid == _outbox.c.sop_instance_uid)
            .scalar_subquery()
        )
    )


def _addresses_from_audit() -> None:
    """Each study's sender address as return-to-sender found it (the latest accepted
    association of its calling AE up to its last receipt), while the audit rows exist."""
    latest = (
        sa.select(_associations.c.peer_address)
        .where(
            _associations.c.calling_ae == _studies.c.calling_ae,
            _associations.c.peer_address.is_not(None),
            _associations.c.outcome.not_like("rejected%"),
            _associations.c.started_at <= _studies.c.last_received_at,
        )
        .order_by(_associations.c.started_at.desc(), _associations.c.id.desc())
        .limit(1)
        .scalar_subquery()
    )
    op.get_bind().execute(
        sa.update(_studies).where(_studies.c.calling_ae.is_not(None)).values(calling_address=latest)
    )


def downgrade() -> None:
    with op.batch_alter_table("study_results") as batch:
        batch.drop_column("report_lease_expires_at")
        batch.drop_column("report_claim_token")
    with op.batch_alter_table("studies") as batch:
        batch.drop_column("calling_address")

    with op.batch_alter_table("outbox") as batch:
        batch.add_column(sa.Column("study_result_id", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("kind", sa.String(length=16), nullable=True))
        batch.add_column(sa.Column("sop_instance_uid", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("path", sa.String(length=512), nullable=True))
    of_object = sa.select(_objects).where(_objects.c.id == _outbox.c.report_object_id)
    op.get_bind().execute(
        sa.update(_outbox).values(
            {
                column: of_object.with_only_columns(_objects.c[column]).scalar_subquery()
                for column in ("study_result_id", "kind", "sop_instance_uid", "path")
            }
        )
    )
    with op.batch_alter_table("outbox") as batch:
        for column, kind in (
            ("study_result_id", sa.Integer()),
            ("kind", sa.String(length=16)),
            ("sop_instance_uid", sa.String(length=64)),
            ("path", sa.String(length=512)),
        ):
            batch.alter_column(column, existing_type=kind, nullable=False)
        batch.create_foreign_key(
            op.f("fk_outbox_study_result_id_study_results"),
            "study_results",
            ["study_result_id"],
            ["id"],
            ondelete="CASCADE",
        )
        batch.create_index("ix_outbox_study_result_id", ["study_result_id"])
        batch.drop_index("ix_outbox_report_object_id")
        batch.drop_constraint("fk_outbox_report_object_id_report_objects", type_="foreignkey")
        batch.drop_column("report_object_id")
    op.drop_index("ix_report_objects_study_result_id", "report_objects")
    op.drop_table("report_objects")
