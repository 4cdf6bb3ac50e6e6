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
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from ichnode.db import audit as statements
from ichnode.db import notifications
from ichnode.db.audit import (  # noqa: F401 - the SCP writes its rows through these names
    AssociationRecord,
    close_association,
    open_association,
    prune_associations,
)
from ichnode.node.loop import run_loop

log = logging.getLogger(__name__)

#: How often a node removes audit rows past their retention.
PRUNE_SECONDS = 3600.0


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

    def step(self) -> float:
        self.run_once()
        return PRUNE_SECONDS

    def run(self, stop: threading.Event) -> None:
        run_loop("audit", self.step, stop, retry_seconds=PRUNE_SECONDS)


def list_associations(
    session: Session, since: datetime | None = None, limit: int = 100
) -> list[dict]:
    """The latest ``limit`` associations (newest first), optionally only those since ``since``."""
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
        for row in statements.associations(session, since, limit)
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
    """The latest delivery attempts of report objects and of result notifications (HL7 v2,
    FHIR; ``kind`` says which, ``status`` is the receiver's answer), newest first."""
    objects: list[dict[str, Any]] = [
        {
            "at": attempt.at,
            "destination": entry.destination,
            "peer": entry.url or f"{entry.ae_title}@{entry.host}:{entry.port}",
            "kind": str(obj.kind),
            "sop_instance_uid": obj.sop_instance_uid,
            "status": "-" if attempt.status_code is None else f"0x{attempt.status_code:04X}",
            "error": attempt.error or "",
        }
        for attempt, entry, obj in statements.delivery_attempts(session, since, limit)
    ]
    messages: list[dict[str, Any]] = [
        {
            "at": attempt.at,
            "destination": note.target,
            "peer": "-",
            "kind": str(note.kind),
            "sop_instance_uid": "-",
            "status": attempt.response or "-",
            "error": attempt.error or "",
        }
        for attempt, note in notifications.attempts(session, since, limit)
    ]
    return sorted(objects + messages, key=lambda r: r["at"], reverse=True)[:limit]


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
