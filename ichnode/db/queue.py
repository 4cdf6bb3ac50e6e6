"""The inference queue: claim instances under a lease, complete, fail, release, reclaim.

The database is the queue. Callers own transactions: every function takes a ``Session``, runs
its statements in the session's transaction and never commits. Commit right after
:func:`claim` (the lease is only visible to others once committed) and after each
:func:`complete` / :func:`fail`.

A claim is one statement, ``UPDATE instances SET status='claimed', claim_token=... WHERE id IN
(SELECT id ... ORDER BY received_at LIMIT n)``. On PostgreSQL the subquery locks its rows with
``FOR UPDATE SKIP LOCKED`` so concurrent claimers take disjoint batches without waiting (the
shape of procrastinate's job fetch). SQLite has no row locks (SQLAlchemy silently drops
``skip_locked`` there) but runs one writer at a time, and the whole statement, subquery
included, runs under the write lock: the same statement is atomic there too.

Each claim writes a fresh ``claim_token``; completing or failing requires the token, so a
worker whose lease expired and whose instance was claimed again cannot write its result.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, String, and_, cast, func, literal, or_, select, tuple_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from ichnode.db.engine import is_postgresql, rowcount
from ichnode.db.models import (
    Instance,
    InstanceStatus,
    Prediction,
    nul_free,
    probability_values,
    utcnow,
)

log = logging.getLogger(__name__)

#: Claims after which an instance that never completed is given up (a poison slice that
#: kills its worker must not loop forever).
DEFAULT_MAX_ATTEMPTS = 3


@dataclass(frozen=True)
class Completion:
    """One scored instance, for :func:`complete_many`."""

    instance_id: int
    claim_token: str
    model_id: str
    probabilities: Sequence[float]
    #: The slice embedding (float32 bytes) the study model reads; None for none.
    embedding: bytes | None = None
    #: The planes' instance ids of a 2.5-D input (:func:`ichnode.db.context.encode`).
    context: str | None = None


def _claimable(now: datetime) -> ColumnElement[bool]:
    """Queued, or claimed by a worker whose lease has expired."""
    return or_(
        Instance.status == InstanceStatus.QUEUED,
        and_(Instance.status == InstanceStatus.CLAIMED, Instance.lease_expires_at < now),
    )


def claim(
    session: Session,
    worker_id: str,
    limit: int,
    lease_seconds: float,
    now: datetime | None = None,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
) -> list[Instance]:
    """Claim up to ``limit`` instances for ``worker_id``, oldest received first.

    Claimable: QUEUED, or CLAIMED with an expired lease. Claimed rows get status CLAIMED,
    ``claimed_by``, a fresh ``claim_token``, ``lease_expires_at = now + lease_seconds`` and
    ``attempts + 1``. Claimable rows that already used ``max_attempts`` are marked FAILED
    ("gave up after N attempts") instead. Returns the claimed instances (all share one token).
    """
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    now = now or utcnow()
    postgres = is_postgresql(session)

    _give_up(session, now, max_attempts, postgres)

    candidates = (
        select(Instance.id)
        .where(_claimable(now), Instance.attempts < max_attempts)
        .order_by(Instance.received_at, Instance.id)
        .limit(limit)
    )
    if postgres:
        candidates = candidates.with_for_update(skip_locked=True)
    token = uuid.uuid4().hex
    stmt = (
        update(Instance)
        .where(Instance.id.in_(candidates))
        .values(
            status=InstanceStatus.CLAIMED,
            claimed_by=worker_id,
            claim_token=token,
            lease_expires_at=now + timedelta(seconds=lease_seconds),
            attempts=Instance.attempts + 1,
        )
        .returning(Instance)
    )
    claimed = list(
        session.scalars(
            stmt, execution_options={"synchronize_session": False, "populate_existing": True}
        )
    )
    claimed.sort(key=lambda inst: (inst.received_at, inst.id))
    if claimed:
        log.debug("worker %s claimed %d instances", worker_id, len(claimed))
    return claimed


def _give_up(session: Session, now: datetime, max_attempts: int, postgres: bool) -> list[int]:
    """Mark FAILED the claimable instances that already had ``max_attempts`` claims."""
    poisoned = select(Instance.id).where(_claimable(now), Instance.attempts >= max_attempts)
    if postgres:
        poisoned = poisoned.with_for_update(skip_locked=True)
    reason = literal("gave up after ") + cast(Instance.attempts, String) + literal(" attempts")
    ids = list(
        session.scalars(
            update(Instance)
            .where(Instance.id.in_(poisoned))
            .values(
                status=InstanceStatus.FAILED,
                reason=reason,
                completed_at=now,
                claim_token=None,
                lease_expires_at=None,
            )
            .returning(Instance.id),
            execution_options={"synchronize_session": False},
        )
    )
    if ids:
        log.warning("gave up on instances %s after %d attempts", ids, max_attempts)
    return ids


def complete(
    session: Session,
    instance_id: int,
    claim_token: str,
    model_id: str,
    probabilities: Sequence[float],
) -> bool:
    """Store the prediction and mark the instance DONE, if it is still ours.

    Returns False and writes nothing when the instance is no longer CLAIMED with
    ``claim_token`` (the lease expired and another worker claimed it, or it was released).
    """
    done = complete_many(session, [Completion(instance_id, claim_token, model_id, probabilities)])
    return instance_id in done


def complete_many(
    session: Session, items: Iterable[Completion], now: datetime | None = None
) -> set[int]:
    """:func:`complete` for a batch, in two statements; returns the ids actually completed."""
    items = list(items)
    if not items:
        return set()
    values = {item.instance_id: probability_values(item.probabilities) for item in items}
    now = now or utcnow()
    done = set(
        session.scalars(
            update(Instance)
            .where(
                Instance.status == InstanceStatus.CLAIMED,
                tuple_(Instance.id, Instance.claim_token).in_(
                    [(item.instance_id, item.claim_token) for item in items]
                ),
            )
            .values(status=InstanceStatus.DONE, completed_at=now, lease_expires_at=None)
            .returning(Instance.id),
            execution_options={"synchronize_session": False},
        )
    )
    rows = [
        {
            "instance_id": item.instance_id,
            "model_id": item.model_id,
            "created_at": now,
            "embedding": item.embedding,
            "study_version": None,
            "context": item.context,
        }
        | values[item.instance_id]
        for item in items
        if item.instance_id in done
    ]
    if rows:
        _upsert_predictions(session, rows)
    stale = len(items) - len(done)
    if stale:
        log.warning("%d completions were stale (lease lost) and were dropped", stale)
    return done


def _upsert_predictions(session: Session, rows: list[dict[str, object]]) -> None:
    """Insert predictions; a re-scored instance replaces its earlier row for the same model."""
    insert = (postgresql if is_postgresql(session) else sqlite).insert(Prediction)
    keys = [column for column in rows[0] if column not in ("instance_id", "model_id")]
    stmt = insert.on_conflict_do_update(
        index_elements=[Prediction.instance_id, Prediction.model_id],
        set_={key: insert.excluded[key] for key in keys},
    )
    session.execute(stmt, rows)


def fail(session: Session, instance_id: int, claim_token: str, reason: str) -> bool:
    """Mark a claimed instance FAILED with ``reason`` (False when it is no longer ours).

    A NUL in ``reason`` (an error message may quote a file's bytes) becomes U+FFFD
    (:func:`~ichnode.db.models.nul_free`)."""
    result = session.execute(
        update(Instance)
        .where(
            Instance.id == instance_id,
            Instance.status == InstanceStatus.CLAIMED,
            Instance.claim_token == claim_token,
        )
        .values(
            status=InstanceStatus.FAILED,
            reason=nul_free(reason),
            completed_at=utcnow(),
            lease_expires_at=None,
        ),
        execution_options={"synchronize_session": False},
    )
    return rowcount(result) == 1


def release(session: Session, worker_id: str) -> int:
    """Give back every instance ``worker_id`` holds (graceful shutdown); returns the count.

    The released claim does not count as an attempt.
    """
    result = session.execute(
        update(Instance)
        .where(Instance.status == InstanceStatus.CLAIMED, Instance.claimed_by == worker_id)
        .values(
            status=InstanceStatus.QUEUED,
            claimed_by=None,
            claim_token=None,
            lease_expires_at=None,
            attempts=func.max(Instance.attempts - 1, 0)
            if not is_postgresql(session)
            else func.greatest(Instance.attempts - 1, 0),
        ),
        execution_options={"synchronize_session": False},
    )
    return rowcount(result)


def requeue(session: Session, instance_ids: Sequence[int]) -> int:
    """Put scored instances back in the queue to be scored again (their 2.5-D neighbours
    changed); not a failed attempt, so their attempt count starts over. Returns the count."""
    if not instance_ids:
        return 0
    result = session.execute(
        update(Instance)
        .where(Instance.id.in_(list(instance_ids)), Instance.status == InstanceStatus.DONE)
        .values(
            status=InstanceStatus.QUEUED,
            claimed_by=None,
            claim_token=None,
            lease_expires_at=None,
            attempts=0,
        ),
        execution_options={"synchronize_session": False},
    )
    return rowcount(result)


def depth(session: Session) -> dict[InstanceStatus, int]:
    """Number of instances in each status (every status present, zero included)."""
    counts = dict.fromkeys(InstanceStatus, 0)
    rows = session.execute(select(Instance.status, func.count()).group_by(Instance.status))
    for status, count in rows:
        counts[InstanceStatus(status)] = count
    return counts
