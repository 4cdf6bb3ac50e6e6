"""The association audit trail: who connected, when, what came of it.

The SCP writes one ``associations`` row per association (accepted ones when accepted, updated
when they end; rejected ones when rejected). :func:`list_associations` reads them back for
``ichnode audit``; :func:`render` prints them. With ``audit_retention_days`` set, a running
node removes the rows older than that (:func:`prune_associations`, via :class:`AuditPruner`).
Callers own transactions.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from ichnode.db.models import AE_LENGTH, Association, DeliveryAttempt, OutboxEntry

log = logging.getLogger(__name__)

#: How often a node removes audit rows past their retention.
PRUNE_SECONDS = 3600.0

#: Width of the peer address column (``Association.peer_address``).
ADDRESS_LENGTH = 64
OUTCOME_LENGTH = 256


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
        return {
            "calling_ae": _cut(self.calling_ae, AE_LENGTH),
            "called_ae": _cut(self.called_ae, AE_LENGTH),
            "peer_address": _cut(self.peer_address, ADDRESS_LENGTH),
            "peer_port": self.peer_port,
            "started_at": self.started_at,
            "n_received": self.n_received,
            "n_failed": self.n_failed,
            "outcome": _cut(self.outcome, OUTCOME_LENGTH),
        }


def _cut(value: str | None, length: int) -> str | None:
    return None if value is None else value[:length]


def open_association(session: Session, record: AssociationRecord) -> int:
    """Insert the row of an accepted association (no end time yet); returns its id."""
    return session.scalar(insert(Association).values(**record.values()).returning(Association.id))


def close_association(session: Session, record: AssociationRecord) -> int:
    """Finish the association's row (insert it when it has none: rejected, never requested)."""
    values = {**record.values(), "ended_at": datetime.now(UTC)}
    if record.row_id is not None:
        session.execute(update(Association).where(Association.id == record.row_id).values(values))
        return record.row_id
    return session.scalar(insert(Association).values(**values).returning(Association.id))


def prune_associations(session: Session, before: datetime) -> int:
    """Delete the association rows that started before ``before``; returns how many."""
    return session.execute(
        delete(Association)
        .where(Association.started_at < before)
        .execution_options(synchronize_session=False)
    ).rowcount


class AuditPruner:
    """``run(stop)`` in a thread: every :data:`PRUNE_SECONDS` (and at start) removes the
    association rows older than ``retention_days``. Several nodes on one database may all
    run it; a delete that finds nothing costs nothing."""

    def __init__(self, sessions: sessionmaker[Session], retention_days: int) -> None:
        self.sessions = sessions
        self.retention = timedelta(days=retention_days)

    def run_once(self, now: datetime | None = None) -> int:
        before = (now or datetime.now(UTC)) - self.retention
        with self.sessions.begin() as session:
            removed = prune_associations(session, before)
        if removed:
            log.info("audit: removed %d association rows older than %s", removed, before.date())
        return removed

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.run_once()
            except SQLAlchemyError as exc:
                log.error("audit: old rows not removed, will retry: %s", type(exc).__name__)
            stop.wait(PRUNE_SECONDS)


def list_associations(
    session: Session, since: datetime | None = None, limit: int = 100
) -> list[dict]:
    """The latest ``limit`` associations (newest first), optionally only those since ``since``."""
    query = select(Association).order_by(Association.started_at.desc(), Association.id.desc())
    if since is not None:
        query = query.where(Association.started_at >= since)
    return [
        {
            "id": row.id,
            "calling_ae": row.calling_ae,
            "called_ae": row.called_ae,
            "peer": f"{row.peer_address}:{row.peer_port}" if row.peer_port else row.peer_address,
            "started_at": row.started_at,
            "ended_at": row.ended_at,
            "n_received": row.n_received,
            "n_failed": row.n_failed,
            "outcome": row.outcome,
        }
        for row in session.scalars(query.limit(limit))
    ]


_COLUMNS = ("started_at", "calling_ae", "called_ae", "peer", "outcome", "n_received", "n_failed")
_HEADERS = ("started (UTC)", "calling AE", "called AE", "peer", "outcome", "received", "failed")


def render(rows: list[dict]) -> str:
    """A plain-text table of :func:`list_associations` rows (for ``ichnode audit``)."""

    def cell(row: dict, key: str) -> str:
        value = row[key]
        if isinstance(value, datetime):
            return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
        return "" if value is None else str(value)

    table = [list(_HEADERS)] + [[cell(r, k) for k in _COLUMNS] for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(_COLUMNS))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) for line in table]
    if not rows:
        lines.append("(no associations recorded)")
    return "\n".join(line.rstrip() for line in lines)


def list_deliveries(
    session: Session, since: datetime | None = None, limit: int = 100
) -> list[dict]:
    """The latest delivery attempts of report objects (newest first)."""
    query = (
        select(DeliveryAttempt, OutboxEntry)
        .join(OutboxEntry, OutboxEntry.id == DeliveryAttempt.outbox_id)
        .order_by(DeliveryAttempt.at.desc(), DeliveryAttempt.id.desc())
    )
    if since is not None:
        query = query.where(DeliveryAttempt.at >= since)
    return [
        {
            "at": attempt.at,
            "destination": entry.destination,
            "peer": f"{entry.ae_title}@{entry.host}:{entry.port}",
            "kind": entry.kind,
            "sop_instance_uid": entry.sop_instance_uid,
            "status": "-" if attempt.status_code is None else f"0x{attempt.status_code:04X}",
            "error": attempt.error or "",
        }
        for attempt, entry in session.execute(query.limit(limit))
    ]


def render_deliveries(rows: list[dict]) -> str:
    """A plain-text table of :func:`list_deliveries` rows."""
    keys = ("at", "destination", "peer", "kind", "status", "sop_instance_uid", "error")
    heads = ("at (UTC)", "destination", "called", "object", "status", "SOP instance", "error")
    table = [list(heads)] + [
        [
            r[k].astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if k == "at" else str(r[k])
            for k in keys
        ]
        for r in rows
    ]
    widths = [max(len(line[i]) for line in table) for i in range(len(keys))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) for line in table]
    if not rows:
        lines.append("(no deliveries recorded)")
    return "\n".join(line.rstrip() for line in lines)
