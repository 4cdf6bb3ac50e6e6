"""The outbox: report objects to their destinations (C-STORE, or STOW-RS for a DICOMweb one),
with retries, from the database.

Every (object, destination) pair is an :class:`OutboxEntry` row; the row is the state, so a
destination that is down loses nothing and a restart resumes where the last run stopped.

One pass (:meth:`Outbox.dispatch`): claim the PENDING entries that are due (a conditional
``UPDATE`` pushes ``next_attempt_at`` a lease ahead, so two senders never send the same entry
and an entry whose sender died becomes due again), send them over one association per
destination -- each destination in its own thread, so one that hangs until
``network_timeout`` holds up no other; a destination still busy is skipped until its send
ends -- record a :class:`DeliveryAttempt` per entry and attempt, then mark each SENT
(Success or a warning status), or due again after ``delivery_backoff_seconds * 2**(n-1)``
(``n``: attempts so far), or FAILED once ``delivery_max_attempts`` is reached. A send still
waiting for a thread when the node stops is cancelled and its entries are released at once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from datetime import datetime
from functools import partial
from pathlib import Path

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from ichnode.config import Destination, Settings
from ichnode.db import delivery
from ichnode.db.delivery import Claimed
from ichnode.db.engine import error_reason
from ichnode.db.models import DeliveryStatus, utcnow
from ichnode.node.loop import run_loop
from ichnode.node.scu import Outcome, send_files
from ichnode.node.stow_client import stow_files
from ichnode.store import Store

log = logging.getLogger(__name__)


#: How long a claimed entry stays invisible to other senders while its send is in flight.
CLAIM_SECONDS = 600.0
#: Entries sent per pass (the rest wait for the next pass, at once).
BATCH = 50
#: Longest wait between passes when nothing wakes the sender.
POLL_SECONDS = 1.0
#: Destinations sent to at the same time (one association each).
PARALLEL_DESTINATIONS = 8


class Outbox:
    """The sender: ``run(stop)`` in a thread; ``wake.set()`` sends new entries at once."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        store: Store,
        settings: Settings,
        wake: threading.Event | None = None,
    ) -> None:
        self.sessions = sessions
        self.store = store
        self.settings = settings
        self.wake = wake or threading.Event()
        self._pool = ThreadPoolExecutor(PARALLEL_DESTINATIONS, thread_name_prefix="outbox-send")
        self._lock = threading.Lock()
        #: Destinations with a send in flight (their new entries wait for it to end).
        self._busy: set[str] = set()

    def _tls(self, destination: str) -> bool:
        return any(d.name == destination and d.tls for d in self.settings.destinations)

    def _destination(self, name: str) -> Destination | None:
        return next((d for d in self.settings.destinations if d.name == name), None)

    def busy(self) -> set[str]:
        """Names of the destinations being sent to right now."""
        with self._lock:
            return set(self._busy)

    def claim(self, now: datetime, skip: set[str] | None = None) -> list[Claimed]:
        """Take up to :data:`BATCH` due entries, none for a destination in ``skip``."""
        with self.sessions.begin() as session:
            return delivery.claim(session, now, BATCH, CLAIM_SECONDS, skip or ())

    def record(self, claimed: Claimed, outcome: Outcome, now: datetime) -> DeliveryStatus | None:
        """Store one attempt and the entry's next state; returns that state (None: the claim
        was lost to another sender, nothing recorded)."""
        s = self.settings
        with self.sessions.begin() as session:
            state = delivery.record(
                session,
                claimed,
                outcome.status,
                outcome.error,
                outcome.delivered,
                now=now,
                max_attempts=s.delivery_max_attempts,
                backoff_seconds=s.delivery_backoff_seconds,
                backoff_max_seconds=s.delivery_backoff_max_seconds,
            )
        if state is None:
            log.warning("outbox: entry %d was claimed by another sender; not recorded", claimed.id)
        return state

    def send_group(
        self,
        target: tuple[str, str, str, int, str | None],
        entries: list[Claimed],
        clock: Callable[[], datetime],
    ) -> None:
        """Send one destination's claimed entries on one association and record each attempt."""
        destination, ae_title, host, port, url = target
        paths = []
        for c in entries:
            try:
                paths.append(self.store.path(c.path))
            except ValueError:
                paths.append(Path("/nonexistent"))
        started = time.monotonic()
        if url is not None:  # a DICOMweb destination: STOW-RS, the same records
            outcomes = stow_files(self.settings, self._destination(destination), url, paths)
        else:
            outcomes = send_files(
                self.settings, ae_title, host, port, paths, tls=self._tls(destination)
            )
        states = [self.record(c, o, clock()) for c, o in zip(entries, outcomes, strict=True)]
        sent = sum(state == DeliveryStatus.SENT for state in states)
        errors = {o.error for o in outcomes if not o.delivered}
        log.info(
            "outbox: %d/%d object(s) sent to %s in %.0f ms%s",
            sent,
            len(entries),
            destination,
            1000 * (time.monotonic() - started),
            f"; {'; '.join(sorted(e for e in errors if e))}" if errors else "",
        )

    def release(self, entries: list[Claimed]) -> None:
        """Make claimed entries due now again (their send was cancelled before it began)."""
        with self.sessions.begin() as session:
            delivery.release(session, entries, utcnow())

    def _finish(self, destination: str, entries: list[Claimed], future: Future[None]) -> None:
        with self._lock:
            self._busy.discard(destination)
        if future.cancelled():  # shut down before the send began: not a failed attempt
            try:
                self.release(entries)
            except SQLAlchemyError as exc:  # they become due when their claim lapses
                log.error("outbox: could not release unsent entries: %s", error_reason(exc))
            return
        error = future.exception()
        if isinstance(error, SQLAlchemyError):
            log.error(
                "outbox: database error while sending to %s: %s", destination, error_reason(error)
            )
        elif error is not None:
            log.error("outbox: sending to %s failed", destination, exc_info=error)
        self.wake.set()  # its next entries may be waiting

    def dispatch(self, now: datetime | None = None) -> tuple[int, list[Future[None]]]:
        """Claim the due entries of every idle destination and start sending them.

        Returns the number of entries claimed and one future per destination started. A
        claimed entry whose send never ends (the process died) is due again after its lease.
        """
        clock: Callable[[], datetime] = (lambda: now) if now is not None else utcnow
        claimed = self.claim(clock(), skip=self.busy())
        groups: dict[tuple[str, str, str, int, str | None], list[Claimed]] = {}
        for c in claimed:
            groups.setdefault((c.destination, c.ae_title, c.host, c.port, c.url), []).append(c)
        futures = []
        for target, entries in groups.items():
            with self._lock:
                self._busy.add(target[0])
            future = self._pool.submit(self.send_group, target, entries, clock)
            future.add_done_callback(partial(self._finish, target[0], entries))
            futures.append(future)
        return len(claimed), futures

    def run_once(self, now: datetime | None = None) -> int:
        """Send every due entry once and wait for the sends; returns the entries attempted."""
        count, futures = self.dispatch(now)
        wait(futures)
        for future in futures:
            future.result()  # a database error reaches the caller
        return count

    def seconds_to_next(self, now: datetime, skip: set[str] | None = None) -> float | None:
        """Seconds until the earliest pending entry is due (0 if one is), None if none.

        Entries of the destinations in ``skip`` (busy ones) are not counted.
        """
        with self.sessions() as session:
            first = delivery.next_due(session, skip or ())
        return None if first is None else max(0.0, (first - now).total_seconds())

    def step(self) -> float:
        """Start the sends of every idle destination's due entries; 0 when a full batch was
        claimed (more may be due), else the time until the next entry is due (at most
        :data:`POLL_SECONDS`)."""
        claimed, _ = self.dispatch()
        if claimed:
            return 0.0
        due = self.seconds_to_next(utcnow(), skip=self.busy())
        return POLL_SECONDS if due is None else min(POLL_SECONDS, due)

    def run(self, stop: threading.Event) -> None:
        """Send until ``stop`` is set; a database or network hiccup never ends the loop.

        Does not wait for sends: a busy destination's send ends by itself and wakes the loop.
        On stop, waits for the sends in flight (each ends within ``network_timeout``).
        """
        try:
            run_loop("outbox", self.step, stop, wake=self.wake, retry_seconds=POLL_SECONDS)
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)
