"""The counts behind ``/metrics`` and ``/healthz``, read from the database at scrape time.

The database is the record, so the counters are counts of rows: they survive restarts and
cover every worker process, not only this one. Callers own the transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import case, func, select, text
from sqlalchemy.orm import Session

from ichnode.db.models import (
    DeliveryAttempt,
    Instance,
    InstanceStatus,
    Notification,
    OutboxEntry,
    Study,
    StudyResult,
)


def ping(session: Session) -> None:
    """One round trip (raises the driver's error when the database cannot be reached)."""
    session.execute(text("SELECT 1"))


def waiting(session: Session) -> int:
    """Instances waiting to be scored (queued or claimed)."""
    return (
        session.scalar(
            select(func.count())
            .select_from(Instance)
            .where(Instance.status.in_([InstanceStatus.QUEUED, InstanceStatus.CLAIMED]))
        )
        or 0
    )


def _count_by(session: Session, column: Any) -> dict[str, int]:
    rows = session.execute(select(column, func.count()).group_by(column)).all()
    return {str(key): int(n) for key, n in rows}


def instances_by_status(session: Session) -> dict[str, int]:
    return _count_by(session, Instance.status)


def studies_by_status(session: Session) -> dict[str, int]:
    return _count_by(session, Study.status)


def deliveries_by_status(session: Session) -> dict[str, int]:
    return _count_by(session, OutboxEntry.status)


def notifications_by_status(session: Session) -> dict[str, int]:
    return _count_by(session, Notification.status)


def results_by_flag(session: Session) -> dict[bool, int]:
    """Result versions written, by whether they were flagged."""
    rows = session.execute(select(StudyResult.flagged, func.count()).group_by(StudyResult.flagged))
    return {bool(flagged): int(n) for flagged, n in rows}


def delivery_attempts(session: Session) -> int:
    return session.scalar(select(func.count(DeliveryAttempt.id))) or 0


def _seconds_between(session: Session, start: Any, end: Any) -> Any:
    """SQL for ``end - start`` in seconds on this session's backend."""
    if session.get_bind().dialect.name == "sqlite":
        return (func.julianday(end) - func.julianday(start)) * 86400.0
    return func.extract("epoch", end - start)


def latency(session: Session, buckets: Sequence[float]) -> tuple[int, float, list[int]]:
    """Of the scored instances, ``completed_at - received_at``: how many, the sum of seconds,
    and how many are within each bucket's upper bound (cumulative, as Prometheus counts)."""
    seconds = _seconds_between(session, Instance.received_at, Instance.completed_at)
    columns = [func.sum(case((seconds <= b, 1), else_=0)) for b in buckets]
    row = session.execute(
        select(func.count(), func.sum(seconds), *columns).where(
            Instance.status == InstanceStatus.DONE, Instance.completed_at.is_not(None)
        )
    ).one()
    return int(row[0] or 0), float(row[1] or 0.0), [int(n or 0) for n in row[2:]]
