"""Statements of the association audit trail (``associations``) and of the delivery log.

The SCP writes one ``associations`` row per association (accepted ones when accepted, updated
when they end; rejected ones when rejected); ``ichnode audit`` reads them back; the audit
pruner deletes the rows past their retention. Callers own transactions.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import delete, insert, select, update
from sqlalchemy.orm import Session

from ichnode.db.engine import rowcount
from ichnode.db.models import Association, DeliveryAttempt, OutboxEntry, ReportObject, clip


@dataclass
class AssociationRecord:
    """What the SCP knows about one association when it writes the audit row."""

    calling_ae: str | None
    called_ae: str | None
    peer_address: str | None
    peer_port: int | None
    started_at: datetime
    n_received: int
    n_failed: int
    outcome: str
    row_id: int | None = None

    def values(self) -> dict[str, object]:
        """The row's values, each text cut to its column (a peer's AE title may be longer)."""
        return {
            "calling_ae": clip(Association.calling_ae, self.calling_ae),
            "called_ae": clip(Association.called_ae, self.called_ae),
            "peer_address": clip(Association.peer_address, self.peer_address),
            "peer_port": self.peer_port,
            "started_at": self.started_at,
            "n_received": self.n_received,
            "n_failed": self.n_failed,
            "outcome": clip(Association.outcome, self.outcome),
        }


def open_association(session: Session, record: AssociationRecord) -> int:
    """Insert the row of an accepted association (no end time yet); returns its id."""
    row_id = session.scalar(insert(Association).values(**record.values()).returning(Association.id))
    assert row_id is not None
    return row_id


def close_association(session: Session, record: AssociationRecord) -> int:
    """Finish the association's row (insert it when it has none: rejected, never requested)."""
    values = {**record.values(), "ended_at": datetime.now(UTC)}
    if record.row_id is not None:
        session.execute(update(Association).where(Association.id == record.row_id).values(values))
        return record.row_id
    row_id = session.scalar(insert(Association).values(**values).returning(Association.id))
    assert row_id is not None
    return row_id


def prune_associations(session: Session, before: datetime) -> int:
    """Delete the association rows that started before ``before``; returns how many."""
    return rowcount(
        session.execute(
            delete(Association)
            .where(Association.started_at < before)
            .execution_options(synchronize_session=False)
        )
    )


def associations(
    session: Session, since: datetime | None = None, limit: int = 100
) -> list[Association]:
    """The latest ``limit`` association rows (newest first), optionally since ``since``."""
    query = select(Association).order_by(Association.started_at.desc(), Association.id.desc())
    if since is not None:
        query = query.where(Association.started_at >= since)
    return list(session.scalars(query.limit(limit)))


def delivery_attempts(
    session: Session, since: datetime | None = None, limit: int = 100
) -> list[tuple[DeliveryAttempt, OutboxEntry, ReportObject]]:
    """The latest delivery attempts (newest first), each with its outbox row and object."""
    query = (
        select(DeliveryAttempt, OutboxEntry, ReportObject)
        .join(OutboxEntry, OutboxEntry.id == DeliveryAttempt.outbox_id)
        .join(ReportObject, ReportObject.id == OutboxEntry.report_object_id)
        .order_by(DeliveryAttempt.at.desc(), DeliveryAttempt.id.desc())
    )
    if since is not None:
        query = query.where(DeliveryAttempt.at >= since)
    return [(a, e, o) for a, e, o in session.execute(query.limit(limit))]
