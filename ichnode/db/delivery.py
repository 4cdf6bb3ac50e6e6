"""The delivery queue: outbox entries claimed under a lease and a token, attempts recorded.

Written like :mod:`ichnode.db.queue`: every function takes a ``Session``, runs its statements
in the caller's transaction and never commits. A claim is one statement, ``UPDATE outbox SET
next_attempt_at = <lease end>, claim_token = ... WHERE id IN (SELECT id ... FOR UPDATE SKIP
LOCKED LIMIT n) RETURNING ...``: a claimed entry is invisible to other senders until its lease
ends (the process died mid-send), and only the holder of the token records its attempt.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Select, func, select, update
from sqlalchemy.orm import Session

from ichnode.db.engine import is_postgresql, rowcount
from ichnode.db.models import (
    DeliveryAttempt,
    DeliveryStatus,
    Notification,
    OutboxEntry,
    ReportKind,
    ReportObject,
    nul_free,
    utcnow,
)


@dataclass(frozen=True)
class Claimed:
    """What a sender needs to send one entry, and the token that lets it record the attempt."""

    id: int
    destination: str
    ae_title: str
    host: str
    port: int
    path: str
    sop_instance_uid: str
    claim_token: str
    #: A DICOMweb destination's STOW-RS URL; None for DIMSE.
    url: str | None = None


def _due(now: datetime, skip: Iterable[str]) -> Select:
    """Pending entries due at ``now``, none for a destination in ``skip`` (busy sending)."""
    query = select(OutboxEntry.id).where(
        OutboxEntry.status == DeliveryStatus.PENDING, OutboxEntry.next_attempt_at <= now
    )
    skip = sorted(skip)
    return query.where(OutboxEntry.destination.not_in(skip)) if skip else query


def claim(
    session: Session, now: datetime, limit: int, lease_seconds: float, skip: Iterable[str] = ()
) -> list[Claimed]:
    """Claim up to ``limit`` due entries, earliest due first, for ``lease_seconds``."""
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    candidates = _due(now, skip).order_by(OutboxEntry.next_attempt_at, OutboxEntry.id).limit(limit)
    if is_postgresql(session):
        candidates = candidates.with_for_update(skip_locked=True)
    token = uuid.uuid4().hex
    rows = session.execute(
        update(OutboxEntry)
        .where(OutboxEntry.id.in_(candidates))
        .values(next_attempt_at=now + timedelta(seconds=lease_seconds), claim_token=token)
        .returning(
            OutboxEntry.id,
            OutboxEntry.destination,
            OutboxEntry.ae_title,
            OutboxEntry.host,
            OutboxEntry.port,
            OutboxEntry.report_object_id,
            OutboxEntry.url,
        ),
        execution_options={"synchronize_session": False},
    ).all()
    files = _files(session, {row.report_object_id for row in rows})
    return sorted(
        (
            Claimed(*row[:5], *files[row.report_object_id], claim_token=token, url=row.url)
            for row in rows
        ),
        key=lambda c: c.id,
    )


def _files(session: Session, object_ids: set[int]) -> dict[int, tuple[str, str]]:
    """(stored path, SOP Instance UID) of each report object."""
    if not object_ids:
        return {}
    rows = session.execute(
        select(ReportObject.id, ReportObject.path, ReportObject.sop_instance_uid).where(
            ReportObject.id.in_(sorted(object_ids))
        )
    )
    return {object_id: (path, uid) for object_id, path, uid in rows}


def record(
    session: Session,
    claimed: Claimed,
    status_code: int | None,
    error: str | None,
    delivered: bool,
    *,
    now: datetime,
    max_attempts: int,
    backoff_seconds: float,
    backoff_max_seconds: float = math.inf,
) -> DeliveryStatus | None:
    """Record one attempt of a claimed entry and set its next state: sent, failed after
    ``max_attempts``, or due again after an exponential backoff (:func:`backoff_delay`).
    Returns that state; None when the claim was lost (the lease ended and another sender
    holds the entry)."""
    entry = session.scalar(
        select(OutboxEntry)
        .where(
            OutboxEntry.id == claimed.id,
            OutboxEntry.claim_token == claimed.claim_token,
            OutboxEntry.status == DeliveryStatus.PENDING,
        )
        .with_for_update()
    )
    if entry is None:
        return None
    entry.attempts += 1
    entry.claim_token = None
    session.add(
        DeliveryAttempt(
            outbox_id=entry.id, at=utcnow(), status_code=status_code, error=nul_free(error)
        )
    )
    return settle(entry, delivered, error, now, max_attempts, backoff_seconds, backoff_max_seconds)


def settle(
    row: OutboxEntry | Notification,
    delivered: bool,
    error: str | None,
    now: datetime,
    max_attempts: int,
    backoff_seconds: float,
    backoff_max_seconds: float = math.inf,
) -> DeliveryStatus:
    """The state of an outbox row (report objects or notifications) after an attempt already
    counted in ``row.attempts``: sent when ``delivered`` (no error kept), failed after
    ``max_attempts``, else due again after :func:`backoff_delay`."""
    row.last_error = None if delivered else nul_free(error)
    if delivered:
        row.status = DeliveryStatus.SENT
        row.sent_at = utcnow()
    elif row.attempts >= max_attempts:
        row.status = DeliveryStatus.FAILED
    else:
        delay = backoff_delay(row.attempts, backoff_seconds, backoff_max_seconds)
        row.next_attempt_at = now + timedelta(seconds=delay)
    return row.status


def backoff_delay(attempts: int, backoff_seconds: float, max_seconds: float = math.inf) -> float:
    """Seconds before the next try after ``attempts`` failed ones: ``backoff_seconds *
    2**(attempts-1)``, at most ``max_seconds`` (so a high ``delivery_max_attempts`` does not
    push a retry days away)."""
    return min(backoff_seconds * 2.0 ** min(attempts - 1, 64), max_seconds)


def release(session: Session, claimed: Iterable[Claimed], now: datetime) -> int:
    """Make claimed entries due at ``now`` again (their send was cancelled before it began)."""
    pairs = [(c.id, c.claim_token) for c in claimed]
    if not pairs:
        return 0
    result = session.execute(
        update(OutboxEntry)
        .where(
            OutboxEntry.id.in_([i for i, _ in pairs]),
            OutboxEntry.claim_token.in_({t for _, t in pairs}),
            OutboxEntry.status == DeliveryStatus.PENDING,
        )
        .values(next_attempt_at=now, claim_token=None),
        execution_options={"synchronize_session": False},
    )
    return rowcount(result)


def next_due(session: Session, skip: Iterable[str] = ()) -> datetime | None:
    """When the earliest pending entry (none of ``skip``'s destinations) is due; None if none."""
    query = select(func.min(OutboxEntry.next_attempt_at)).where(
        OutboxEntry.status == DeliveryStatus.PENDING
    )
    skip = sorted(skip)
    if skip:
        query = query.where(OutboxEntry.destination.not_in(skip))
    return session.scalar(query)


@dataclass(frozen=True)
class Queued:
    """The newest outbox row of one (destination, object kind) of a result version."""

    destination: str
    ae_title: str
    host: str
    port: int
    report_object_id: int
    kind: ReportKind
    path: str
    url: str | None = None


def latest_queued(session: Session, result_id: int) -> list[Queued]:
    """The newest outbox row of each (destination, kind) of the version, oldest row first."""
    rows = session.execute(
        select(OutboxEntry, ReportObject)
        .join(ReportObject, ReportObject.id == OutboxEntry.report_object_id)
        .where(ReportObject.study_result_id == result_id)
        .order_by(OutboxEntry.id.desc())
    ).all()
    latest: dict[tuple[str, ReportKind], tuple[int, Queued]] = {}
    for entry, obj in rows:
        latest.setdefault(
            (entry.destination, obj.kind),
            (
                entry.id,
                Queued(
                    entry.destination,
                    entry.ae_title,
                    entry.host,
                    entry.port,
                    obj.id,
                    obj.kind,
                    obj.path,
                    entry.url,
                ),
            ),
        )
    return [queued for _, queued in sorted(latest.values(), key=lambda pair: pair[0])]


def enqueue(session: Session, rows: Iterable[Queued], now: datetime) -> int:
    """New PENDING outbox rows, due ``now``, sending the same objects to the same addresses."""
    entries = [
        OutboxEntry(
            report_object_id=q.report_object_id,
            destination=q.destination,
            ae_title=q.ae_title,
            host=q.host,
            port=q.port,
            url=q.url,
            next_attempt_at=now,
            created_at=now,
        )
        for q in rows
    ]
    session.add_all(entries)
    session.flush()
    return len(entries)
