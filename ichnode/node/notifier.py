"""The notifier: send each pending result notification (HL7 v2, FHIR) to its receiver.

The rows are the state (:mod:`ichnode.db.notifications`), written with the result version:
a receiver that is down loses nothing, and a restart resumes where the last run stopped. One
pass claims the due rows under a lease, builds each message from the database (the study's
patient and order, the version's findings), sends it, and records the attempt: sent, due
again after ``delivery_backoff_seconds * 2**(n-1)``, or failed after
``delivery_max_attempts`` -- the outbox's settings, as the issue of a result is one delivery.
Messages are sent one after the other, each bounded by ``network_timeout``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime

from sqlalchemy.orm import Session, sessionmaker

from ichnode.config import NotifyTarget, Settings
from ichnode.db import notifications
from ichnode.db.models import DeliveryStatus, NotifyKind, utcnow
from ichnode.node.loop import run_loop
from ichnode.notify import NotifyError, fhir, hl7v2
from ichnode.notify.facts import ResultFacts, from_rows

log = logging.getLogger(__name__)

#: How long a claimed notification stays with its notifier while it is sent.
CLAIM_SECONDS = 300.0
BATCH = 20
POLL_SECONDS = 1.0


def receivers(settings: Settings) -> list[notifications.Wanted]:
    """What the monitor queues for each new result version (``[[notify]]`` tables)."""
    return [
        notifications.Wanted(t.name, NotifyKind(t.kind), t.when == "flagged")
        for t in settings.notify
    ]


def deliver(
    target: NotifyTarget,
    facts: ResultFacts,
    timeout: float,
    ca: str | None = None,
    message_id: str | None = None,
) -> str:
    """Build and send one message to ``target``; the receiver's answer, or :class:`NotifyError`.
    An ``https`` FHIR server is verified against ``ca`` (``tls.ca``) or the system CAs.
    ``message_id`` (the HL7 message control ID) is the same on every retry of a notification,
    so a receiver that got a message whose ACK was lost can tell the repeat."""
    if target.kind == NotifyKind.HL7V2:
        assert target.host is not None and target.port is not None  # validated in config
        message = hl7v2.build_oru(
            facts, target.sending_application, target.receiving_application, message_id
        )
        return hl7v2.send(message, target.host, target.port, timeout)
    assert target.url is not None
    return fhir.send(fhir.build_report(facts), target.url, target.token, timeout, ca or True)


class Notifier:
    """``run(stop)`` in a thread; ``wake.set()`` sends new notifications at once."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        settings: Settings,
        wake: threading.Event | None = None,
    ) -> None:
        self.sessions = sessions
        self.settings = settings
        self.wake = wake or threading.Event()

    def send_one(self, claimed: notifications.Claimed, now: datetime) -> DeliveryStatus | None:
        """Send one claimed notification and record the attempt; returns the new state."""
        response: str | None = None
        error: str | None = None
        target = next((t for t in self.settings.notify if t.name == claimed.target), None)
        with self.sessions() as session:
            found = notifications.subject(session, claimed.study_result_id)
            facts = None if found is None else from_rows(*found)
        if target is None or target.kind != claimed.kind:
            error = f"no {claimed.kind} receiver named {claimed.target!r} in the config"
        elif facts is None:
            error = f"study result {claimed.study_result_id} is gone"
        else:
            try:
                ca = str(self.settings.tls.ca) if self.settings.tls.ca else None
                response = deliver(
                    target, facts, self.settings.network_timeout, ca, f"ICHNODE{claimed.id}"
                )
            except NotifyError as exc:
                error, response = str(exc), exc.response
        s = self.settings
        with self.sessions.begin() as session:
            state = notifications.record(
                session,
                claimed,
                response,
                error,
                now=now,
                max_attempts=s.delivery_max_attempts,
                backoff_seconds=s.delivery_backoff_seconds,
                backoff_max_seconds=s.delivery_backoff_max_seconds,
            )
        log.log(
            logging.INFO if error is None else logging.WARNING,
            "notify: result %d to %s (%s): %s",
            claimed.study_result_id,
            claimed.target,
            claimed.kind,
            response if error is None else f"{state}; {error}",
        )
        return state

    def run_once(self, now: datetime | None = None) -> int:
        """Send every due notification once; returns how many were attempted."""
        clock: Callable[[], datetime] = (lambda: now) if now is not None else utcnow
        with self.sessions.begin() as session:
            claimed = notifications.claim(session, clock(), BATCH, CLAIM_SECONDS)
        for item in claimed:
            self.send_one(item, clock())
        return len(claimed)

    def step(self) -> float:
        if self.run_once() >= BATCH:
            return 0.0
        with self.sessions() as session:
            first = notifications.next_due(session)
        if first is None:
            return POLL_SECONDS
        return min(POLL_SECONDS, max(0.0, (first - utcnow()).total_seconds()))

    def run(self, stop: threading.Event) -> None:
        """Send until ``stop`` is set; no failure ends the loop."""
        run_loop("notifier", self.step, stop, wake=self.wake, retry_seconds=POLL_SECONDS)
