"""Association policy, limits and audit of the listening AE (everything but the C-STORE).

Who may associate: the AE-title checks are pynetdicom's own (``require_calling_aet``,
``require_called_aet``, set by :meth:`Associations.configure`), which reject with the PS3.8
reasons; ``EVT_REQUESTED`` adds only what pynetdicom cannot check, a calling AE title bound to
addresses (``calling_ae_hosts``) and a per-peer rate limit. What a peer may make us hold: the
association count and timeouts (pynetdicom), the PDU cap (:mod:`ichnode.node.transport`) and
the receive cap on one message (:meth:`Associations.receive_cap`). Every connection leaves
one audit row (:mod:`ichnode.audit`), rejections and probes included.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from pynetdicom import AE, evt
from pynetdicom.association import Association
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import sessionmaker

from ichnode import audit
from ichnode.config import Settings
from ichnode.node.transport import P_DATA_TF, GuardedServer

log = logging.getLogger(__name__)

#: P-DATA bytes one message may reach before the association is cut off: pynetdicom holds a
#: whole message in memory before the C-STORE handler sees it, so past this point a peer
#: could exhaust RAM. Up to it, an instance over ``max_instance_bytes`` still gets 0xA700.
RECEIVE_CAP_FACTOR = 2
RECEIVE_CAP_SLACK = 1 << 20

# A-ASSOCIATE-RJ (PS3.8 9.3.4): result, source, reason/diagnostic.
REJECTED_PERMANENT = 0x01
REJECTED_TRANSIENT = 0x02
SOURCE_SERVICE_USER = 0x01
SOURCE_PRESENTATION = 0x03
CALLING_AE_NOT_RECOGNISED = 0x03
CALLED_AE_NOT_RECOGNISED = 0x07
LOCAL_LIMIT_EXCEEDED = 0x02
TEMPORARY_CONGESTION = 0x01
#: Window of ``max_associations_per_minute`` (seconds).
RATE_WINDOW = 60.0
#: Peers remembered by the rate limit before idle ones are forgotten.
RATE_TABLE_LIMIT = 4096

_REJECT_REASONS: dict[tuple[object, object], str] = {
    (SOURCE_SERVICE_USER, CALLING_AE_NOT_RECOGNISED): "calling AE title not recognised",
    (SOURCE_SERVICE_USER, CALLED_AE_NOT_RECOGNISED): "called AE title not recognised",
    (SOURCE_PRESENTATION, LOCAL_LIMIT_EXCEEDED): "too many associations",
    (SOURCE_PRESENTATION, TEMPORARY_CONGESTION): "too many association requests from this peer",
}


@dataclass
class AssociationStats:
    """One connection's audit facts, from its opening to its close."""

    address: str
    port: int | None
    calling_ae: str | None = None
    called_ae: str | None = None
    started: datetime = field(default_factory=lambda: datetime.now(UTC))
    row_id: int | None = None
    outcome: str = "no association request"
    stored: int = 0
    skipped: int = 0
    failed: int = 0
    studies: set[str] = field(default_factory=set)
    #: Orders the audit writes of one association (its events come from more than one thread).
    lock: threading.Lock = field(default_factory=threading.Lock)
    closed: bool = False
    #: P-DATA bytes received since the last C-STORE was handled (see RECEIVE_CAP_FACTOR).
    pending_bytes: int = 0
    cut_off: bool = False


class Associations:
    """The listening AE's association policy, limits and audit rows (see module docstring)."""

    def __init__(self, settings: Settings, sessions: sessionmaker) -> None:
        self.settings = settings
        self.sessions = sessions
        self._stats: dict[int, AssociationStats] = {}
        self._lock = threading.Lock()
        #: peer address -> monotonic times of its recent association requests
        self._requests: dict[str, deque[float]] = {}

    # ------------------------------------------------------------------ set-up

    def configure(self, ae: AE) -> None:
        """Limits, timeouts and the AE-title checks that pynetdicom applies itself."""
        s = self.settings
        ae.maximum_associations = s.max_associations
        ae.maximum_pdu_size = s.max_pdu
        ae.network_timeout = s.idle_timeout
        ae.acse_timeout = s.network_timeout
        ae.dimse_timeout = s.network_timeout
        ae.require_called_aet = s.require_called_ae
        ae.require_calling_aet = self.known_calling_aes()

    def known_calling_aes(self) -> list[str]:
        """Calling AE titles we accept (``calling_ae_allow`` and ``calling_ae_hosts``); [] = any."""
        s = self.settings
        return sorted({*s.calling_ae_allow, *s.calling_ae_hosts})

    def handlers(self) -> list:
        return [
            (evt.EVT_CONN_OPEN, self._on_conn_open),
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_ACCEPTED, self._on_accepted),
            (evt.EVT_REJECTED, self._on_rejected),
            (evt.EVT_RELEASED, self._on_ended, ["released"]),
            (evt.EVT_ABORTED, self._on_ended, ["aborted"]),
            (evt.EVT_CONN_CLOSE, self._on_conn_close),
            (evt.EVT_DATA_RECV, self._on_data),
        ]

    def watch(self, server: GuardedServer) -> None:
        """Audit what the guarded server refuses before an association exists."""
        server.io_timeout = self.settings.network_timeout
        server.on_handshake_failed = self._on_tls_failed
        server.on_no_request = self._on_no_request
        server.on_pdu_refused = self._on_pdu_refused

    # ------------------------------------------------------------------ per message

    def receive_cap(self) -> int:
        """Bytes of one message past which the association is cut off."""
        return RECEIVE_CAP_FACTOR * self.settings.max_instance_bytes + RECEIVE_CAP_SLACK

    def message_handled(self, assoc: object) -> None:
        """A C-STORE reached its handler: the next message starts counting afresh."""
        stats = self._stats.get(id(assoc))
        if stats is not None:
            stats.pending_bytes = 0

    def count(self, assoc: object, outcome: str, study_uid: str | None = None) -> None:
        """Count one C-STORE's ``outcome`` (stored, skipped or failed) for the audit row."""
        stats = self._stats.get(id(assoc))
        if stats is None:
            return
        setattr(stats, outcome, getattr(stats, outcome) + 1)
        if study_uid:
            stats.studies.add(study_uid)

    def _on_data(self, event: evt.Event) -> None:
        """pynetdicom's ``EVT_DATA_RECV``: :meth:`data_received` for every PDU it reads."""
        data = event.data
        if data and data[0] == P_DATA_TF:
            self.data_received(event.assoc, len(data))

    def data_received(self, assoc: Association, nbytes: int) -> bool:
        """Count a P-DATA-TF of ``nbytes``; cut a peer off whose message outgrows the receive
        cap. False once the association is cut off.

        Runs in the association's reader thread for every P-DATA-TF, before the message is
        assembled. Closing the socket ends the association like a network failure; the
        partial message is dropped and nothing is stored.
        """
        stats = self._stats.get(id(assoc))
        if stats is None:
            return True
        if stats.cut_off:
            return False
        stats.pending_bytes += nbytes
        if stats.pending_bytes <= self.receive_cap():
            return True
        stats.cut_off = True
        stats.outcome = "aborted: message over the receive limit"
        log.warning(
            "association from calling AE %s cut off: one message passed %d bytes "
            "(%d x max_instance_bytes)",
            stats.calling_ae,
            self.receive_cap(),
            RECEIVE_CAP_FACTOR,
        )
        sock = assoc.dul.socket
        if sock is not None:
            sock.close()
        return False

    # ------------------------------------------------------------------ policy

    def _on_conn_open(self, event: evt.Event) -> None:
        address = getattr(event, "address", None)  # set by pynetdicom on connection events
        if not isinstance(address, tuple):
            address = ("?", None)
        with self._lock:
            self._stats[id(event.assoc)] = AssociationStats(str(address[0]), address[1])

    def _on_requested(self, event: evt.Event) -> None:
        """Before pynetdicom negotiates (and checks the AE titles): the rate limit, and a
        calling AE title bound to addresses; reject with the PS3.8 reason."""
        assoc = event.assoc
        rq = assoc.requestor.primitive
        if rq is None:  # pynetdicom triggers EVT_REQUESTED only with the request in hand
            return
        calling = rq.calling_ae_title.strip()
        stats = self._stats.get(id(assoc))
        if stats is not None:
            stats.calling_ae, stats.called_ae = calling, rq.called_ae_title.strip()
        hosts = self.settings.calling_ae_hosts.get(calling)
        if self._over_rate(str(assoc.requestor.address)):
            assoc.acse.send_reject(REJECTED_TRANSIENT, SOURCE_PRESENTATION, TEMPORARY_CONGESTION)
        elif hosts is not None and not _address_in(assoc.requestor.address, hosts):
            assoc.acse.send_reject(
                REJECTED_PERMANENT, SOURCE_SERVICE_USER, CALLING_AE_NOT_RECOGNISED
            )
        else:
            return
        self._on_rejected(event)
        assoc.kill()  # as pynetdicom does after its own rejections: lets the RJ PDU go out

    def _over_rate(self, address: str) -> bool:
        """Count a request from ``address``; True when it is over the per-minute limit."""
        limit = self.settings.max_associations_per_minute
        if not limit:
            return False
        now = time.monotonic()
        with self._lock:
            recent = self._requests.setdefault(address, deque())
            while recent and recent[0] <= now - RATE_WINDOW:
                recent.popleft()
            recent.append(now)
            if len(self._requests) > RATE_TABLE_LIMIT:  # forget idle peers
                for peer in [a for a, q in self._requests.items() if q[-1] <= now - RATE_WINDOW]:
                    del self._requests[peer]
            return len(recent) > limit

    # ------------------------------------------------------------------ audit

    def _on_accepted(self, event: evt.Event) -> None:
        stats = self._stats.get(id(event.assoc))
        if stats is None:
            return
        stats.outcome = "accepted"
        with stats.lock:
            if not stats.closed:
                stats.row_id = self._audit(audit.open_association, stats)
        log.info("association accepted: calling AE %s from %s", stats.calling_ae, stats.address)

    def _on_rejected(self, event: evt.Event) -> None:
        with self._lock:
            stats = self._stats.pop(id(event.assoc), None)
        if stats is None:
            return
        rj = event.assoc.acceptor.primitive
        key = (getattr(rj, "result_source", None), getattr(rj, "diagnostic", None))
        why = _REJECT_REASONS.get(key, f"source {key[0]} reason {key[1]}")
        stats.outcome = f"rejected: {why}"
        with stats.lock:
            stats.closed = True
            self._audit(audit.close_association, stats)
        log.warning(
            "association rejected (%s): calling AE %s, called AE %s, from %s",
            why,
            stats.calling_ae,
            stats.called_ae,
            stats.address,
        )

    def _on_no_request(self, address: object, reason: str) -> None:
        """An audit row for a connection that sent no association request (a probe, a scan)."""
        self._audit_connection(address, f"no association request ({reason})")

    def _on_tls_failed(self, address: object, reason: str) -> None:
        """An audit row for a connection whose TLS handshake failed (no association exists)."""
        self._audit_connection(address, f"rejected: TLS handshake failed ({reason})")

    def _audit_connection(self, address: object, outcome: str) -> None:
        host, port = address if isinstance(address, tuple) else ("?", None)
        stats = AssociationStats(str(host), port, outcome=outcome)
        stats.closed = True
        self._audit(audit.close_association, stats)

    def _on_pdu_refused(self, assoc: object, reason: str) -> None:
        """A PDU over the size limit was refused from its header (see node.transport)."""
        stats = self._stats.get(id(assoc))
        if stats is not None:
            stats.cut_off = True
            stats.outcome = "aborted: PDU over the size limit"

    def _on_ended(self, event: evt.Event, how: str) -> None:
        stats = self._stats.get(id(event.assoc))
        if stats is not None and not stats.cut_off:
            stats.outcome = how

    def _on_conn_close(self, event: evt.Event) -> None:
        with self._lock:
            stats = self._stats.pop(id(event.assoc), None)
        if stats is None:
            return
        if stats.outcome == "accepted":
            stats.outcome = "aborted"  # the connection went without A-RELEASE or A-ABORT
        with stats.lock:
            stats.closed = True
            self._audit(audit.close_association, stats)
        secs = (datetime.now(UTC) - stats.started).total_seconds()
        log.info(
            "association %s: calling AE %s, %d stored, %d skipped, %d failed, %d studies, %.1f s",
            stats.outcome,
            stats.calling_ae,
            stats.stored,
            stats.skipped,
            stats.failed,
            len(stats.studies),
            secs,
        )

    def _audit(self, write: Callable[..., int | None], stats: AssociationStats) -> int | None:
        """Write the association's audit row; a database failure is logged, never raised."""
        try:
            with self.sessions.begin() as session:
                return write(
                    session,
                    audit.AssociationRecord(
                        row_id=stats.row_id,
                        calling_ae=stats.calling_ae,
                        called_ae=stats.called_ae,
                        peer_address=stats.address,
                        peer_port=stats.port,
                        started_at=stats.started,
                        n_received=stats.stored + stats.skipped,
                        n_failed=stats.failed,
                        outcome=stats.outcome,
                    ),
                )
        except SQLAlchemyError as exc:
            log.error("association audit row not written: %s", type(exc).__name__)
            return None


def _address_in(address: str, networks: list[str]) -> bool:
    """True if ``address`` lies in one of ``networks`` (addresses or CIDR networks)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if ip.version == 6 and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return any(ip in ipaddress.ip_network(n, strict=False) for n in networks)
