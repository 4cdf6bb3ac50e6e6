"""Group commit: the rows of instances received at the same moment, in one SQLite commit.

SQLite commits one write transaction at a time, each with its own WAL fsync. With several
associations storing at once, their commits queue at the write lock (:mod:`ichnode.db.
write_turn`). Here a thread that wants to commit joins a group instead: the first of a group
(the leader) takes the write turn, and every write that joined while it waited for the turn
runs in its one transaction, committed once. Nobody returns before the commit that holds its
rows, so a Success sent after :meth:`GroupCommit.run` still means "in the database"; a lone
writer (one association) commits alone, as before, without waiting for company.

Any failure (a write's statement, the commit) rolls the whole group back and tells each member
(:class:`GroupFailed`) to redo its write alone, where the single-commit error handling applies
(a concurrent duplicate, a full disk, a dead database).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

from sqlalchemy.orm import Session, sessionmaker

from ichnode.db.engine import error_reason
from ichnode.db.write_turn import WriteTurns

log = logging.getLogger(__name__)

T = TypeVar("T")

#: The most writes one transaction takes; later arrivals form the next group.
MAX_GROUP = 64

#: A member's result before its group ended.
_PENDING: object = object()


class GroupFailed(Exception):
    """The group's transaction was rolled back: this write was not made; redo it alone."""


class _Member(Generic[T]):
    __slots__ = ("write", "wake", "lead", "done", "result")

    def __init__(self, write: Callable[[Session], T]) -> None:
        self.write = write
        self.wake = threading.Event()
        self.lead = False
        self.done = False
        self.result: object = _PENDING


class GroupCommit:
    """One process's group commits to one database (``turns``: its writers' turns at the
    write lock). ``on_rollback`` runs, inside the turn, after a group was rolled back (to forget
    ids the group's writes had cached)."""

    def __init__(
        self,
        sessions: sessionmaker,
        turns: WriteTurns,
        *,
        on_rollback: Callable[[], None] | None = None,
        max_group: int = MAX_GROUP,
    ) -> None:
        self.sessions = sessions
        self.turns = turns
        self.on_rollback = on_rollback
        self.max_group = max_group
        self._lock = threading.Lock()
        self._queue: list[_Member] = []
        self._leading = False
        #: Groups committed and the writes in them (for tests and the benchmark's notes).
        self.groups = 0
        self.writes = 0

    def run(self, write: Callable[[Session], T]) -> T:
        """Run ``write(session)`` in a transaction shared with other threads' writes; returns
        its result once that transaction is committed. Raises :class:`GroupFailed` when the
        group was rolled back (nothing of ``write`` was kept)."""
        me: _Member[T] = _Member(write)
        with self._lock:
            self._queue.append(me)
            if not self._leading:  # the queue was empty: this write starts a group
                self._leading = me.lead = True
        if not me.lead:
            me.wake.wait()  # committed by a leader, or handed the lead
        if not me.done:
            self._lead()
        if isinstance(me.result, GroupFailed):
            raise me.result
        return me.result  # type: ignore[return-value]

    def _lead(self) -> None:
        """Commit the writes queued up to now (this thread's first), then hand the lead on."""
        group: list[_Member] = []
        try:
            with self.turns.turn():
                with self._lock:  # everyone who arrived while the turn was awaited
                    group = self._queue[: self.max_group]
                    del self._queue[: len(group)]
                try:
                    with self.sessions() as session:
                        results = [member.write(session) for member in group]
                        session.commit()
                except Exception as exc:  # noqa: BLE001 - every member redoes its write alone
                    failed = GroupFailed(error_reason(exc))
                    log.info("group of %d writes rolled back, redone one by one", len(group))
                    if self.on_rollback is not None:
                        self.on_rollback()
                    results = [failed] * len(group)
                self.groups += 1
                self.writes += len(group)
            for member, result in zip(group, results, strict=True):
                member.result = result
        finally:
            with self._lock:
                if self._queue:
                    successor = self._queue[0]
                    successor.lead = True
                    successor.wake.set()
                else:
                    self._leading = False
            for member in group:
                if member.result is _PENDING:  # the leader was stopped mid-group
                    member.result = GroupFailed("the group's leader stopped")
                member.done = True
                member.wake.set()
