"""The pynetdicom C-STORE SCP: receive, validate, store durably, enqueue, then answer.

The C-STORE handler is short: header checked (``node.intake``) → bytes written as received
(temp file, fsync, rename) → instance row committed with status ``queued`` → Success. Storage
or database trouble answers 0xA700 and leaves neither an orphan file nor an orphan row. Every
refusal is one ``intake.Refusal`` turned into the answer and the log line in one place.
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

from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AE, evt
from pynetdicom.presentation import AllStoragePresentationContexts
from pynetdicom.sop_class import Verification
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import sessionmaker

from ichnode import audit
from ichnode.config import Settings
from ichnode.db import ingest
from ichnode.db.models import InstanceStatus
from ichnode.imaging import CT_SOP_CLASSES
from ichnode.node import intake, storing
from ichnode.node.intake import Refusal
from ichnode.node.selection import SelectionRules
from ichnode.node.statuses import (  # noqa: F401 - the statuses, importable from here as before
    CANNOT_UNDERSTAND,
    DATASET_DOES_NOT_MATCH,
    OUT_OF_RESOURCES,
    SUCCESS,
)
from ichnode.node.tls import ReloadingContext
from ichnode.node.transport import GuardedServer, start_server
from ichnode.store import Store, uid_hash

log = logging.getLogger(__name__)

#: P-DATA bytes one message may reach before the association is cut off: pynetdicom holds a
#: whole message in memory before the C-STORE handler sees it, so past this point a peer
#: could exhaust RAM. Up to it, an instance over ``max_instance_bytes`` still gets 0xA700.
RECEIVE_CAP_FACTOR = 2
RECEIVE_CAP_SLACK = 1 << 20
_P_DATA_TF = 0x04

#: Transfer syntaxes ichnode.imaging decodes, in the order we list them (the sender's order of
#: preference decides which one is used, so we receive its original encoding when we can).
CT_TRANSFER_SYNTAXES = [
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    RLELossless,
]
#: Objects we only record (nothing decoded) are accepted in the same syntaxes. Explicit VR Big
#: Endian is retired (PS3.5 A.3) and is refused for every SOP class, as is any syntax not listed.
OTHER_TRANSFER_SYNTAXES = list(CT_TRANSFER_SYNTAXES)


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

_REJECT_REASONS = {
    (SOURCE_SERVICE_USER, CALLING_AE_NOT_RECOGNISED): "calling AE title not recognised",
    (SOURCE_SERVICE_USER, CALLED_AE_NOT_RECOGNISED): "called AE title not recognised",
    (SOURCE_PRESENTATION, LOCAL_LIMIT_EXCEEDED): "too many associations",
    (SOURCE_PRESENTATION, TEMPORARY_CONGESTION): "too many association requests from this peer",
}


@dataclass
class _AssocStats:
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


class StorageSCP:
    """ichnode's listening AE: Verification plus Storage for CT (and, optionally, the rest)."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        sessions: sessionmaker,
        on_stored: Callable[[], None] | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.sessions = sessions
        self.on_stored = on_stored or (lambda: None)
        self.rules = SelectionRules(settings.selection)
        self.known_ids = ingest.KnownIds()
        self._stats: dict[int, _AssocStats] = {}
        self._lock = threading.Lock()
        #: peer address -> monotonic times of its recent association requests
        self._requests: dict[str, deque[float]] = {}
        self.server = None

    # ------------------------------------------------------------------ AE set-up

    def build_ae(self) -> AE:
        s = self.settings
        ae = AE(ae_title=s.ae_title)
        ae.add_supported_context(Verification)
        for uid in sorted(CT_SOP_CLASSES):
            ae.add_supported_context(uid, CT_TRANSFER_SYNTAXES)
        if s.accept_other_objects:
            for cx in AllStoragePresentationContexts:
                if cx.abstract_syntax not in CT_SOP_CLASSES:
                    ae.add_supported_context(cx.abstract_syntax, OTHER_TRANSFER_SYNTAXES)
        ae.maximum_associations = s.max_associations
        ae.maximum_pdu_size = s.max_pdu
        ae.network_timeout = s.idle_timeout
        ae.acse_timeout = s.network_timeout
        ae.dimse_timeout = s.network_timeout
        ae.require_called_aet = s.require_called_ae
        ae.require_calling_aet = self.known_calling_aes()
        return ae

    def known_calling_aes(self) -> list[str]:
        """Calling AE titles we accept (``calling_ae_allow`` and ``calling_ae_hosts``); [] = any."""
        s = self.settings
        return sorted({*s.calling_ae_allow, *s.calling_ae_hosts})

    def handlers(self) -> list:
        return [
            (evt.EVT_C_ECHO, lambda event: SUCCESS),
            (evt.EVT_C_STORE, self.handle_store),
            (evt.EVT_CONN_OPEN, self._on_conn_open),
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_ACCEPTED, self._on_accepted),
            (evt.EVT_REJECTED, self._on_rejected),
            (evt.EVT_RELEASED, self._on_ended, ["released"]),
            (evt.EVT_ABORTED, self._on_ended, ["aborted"]),
            (evt.EVT_CONN_CLOSE, self._on_conn_close),
            (evt.EVT_DATA_RECV, self._on_data),
        ]

    def receive_cap(self) -> int:
        """Bytes of one message past which the association is cut off."""
        return RECEIVE_CAP_FACTOR * self.settings.max_instance_bytes + RECEIVE_CAP_SLACK

    def _on_data(self, event: evt.Event) -> None:
        """Count a message's P-DATA; cut a peer off whose message outgrows the receive cap.

        Runs in the association's reader thread for every PDU, before pynetdicom buffers it.
        Closing the socket ends the association like a network failure; the partial message
        is dropped and nothing is stored.
        """
        data = event.data
        if not data or data[0] != _P_DATA_TF:
            return
        stats = self._stats.get(id(event.assoc))
        if stats is None or stats.cut_off:
            return
        stats.pending_bytes += len(data)
        if stats.pending_bytes > self.receive_cap():
            stats.cut_off = True
            stats.outcome = "aborted: message over the receive limit"
            log.warning(
                "association from calling AE %s cut off: one message passed %d bytes "
                "(%d x max_instance_bytes)",
                stats.calling_ae,
                self.receive_cap(),
                RECEIVE_CAP_FACTOR,
            )
            sock = event.assoc.dul.socket
            if sock is not None:
                sock.close()

    def start(self, tls: ReloadingContext | None = None) -> GuardedServer:
        """Start listening in background threads; returns the (pynetdicom) server.

        ``tls``: the listening port's TLS context, which follows its files (None: no TLS).
        """
        s = self.settings
        ae = self.build_ae()
        server = ae.make_server(
            (s.bind, s.port),
            evt_handlers=self.handlers(),
            ssl_context=tls.current() if tls else None,
            server_class=GuardedServer,
        )
        server.tls = tls
        server.io_timeout = s.network_timeout
        server.on_handshake_failed = self._on_tls_failed
        server.on_no_request = self._on_no_request
        server.on_pdu_refused = self._on_pdu_refused
        start_server(server)
        self.server = server
        return server

    def shutdown(self) -> None:
        """Stop accepting; in-flight C-STOREs finish (pynetdicom joins association threads)."""
        if self.server is not None:
            self.server.shutdown()
            self.server = None

    # ------------------------------------------------------------------ association log

    def _on_conn_open(self, event: evt.Event) -> None:
        address = event.address if isinstance(event.address, tuple) else ("?", None)
        with self._lock:
            self._stats[id(event.assoc)] = _AssocStats(str(address[0]), address[1])

    def _on_requested(self, event: evt.Event) -> None:
        """Check who is calling before pynetdicom negotiates; reject with the PS3.8 reason."""
        assoc = event.assoc
        rq = assoc.requestor.primitive
        calling = rq.calling_ae_title.strip()
        called = rq.called_ae_title.strip()
        stats = self._stats.get(id(assoc))
        if stats is not None:
            stats.calling_ae, stats.called_ae = calling, called
        reason = None
        known = self.known_calling_aes()
        hosts = self.settings.calling_ae_hosts.get(calling)
        if (known and calling not in known) or (
            hosts is not None and not _address_in(assoc.requestor.address, hosts)
        ):
            reason = CALLING_AE_NOT_RECOGNISED
        elif self.settings.require_called_ae and called != self.settings.ae_title:
            reason = CALLED_AE_NOT_RECOGNISED
        if self._over_rate(str(assoc.requestor.address)):
            assoc.acse.send_reject(REJECTED_TRANSIENT, SOURCE_PRESENTATION, TEMPORARY_CONGESTION)
        elif reason is not None:
            assoc.acse.send_reject(REJECTED_PERMANENT, SOURCE_SERVICE_USER, reason)
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
            if len(self._requests) > 4096:  # forget idle peers, so the table stays small
                for peer in [a for a, q in self._requests.items() if q[-1] <= now - RATE_WINDOW]:
                    del self._requests[peer]
            return len(recent) > limit

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
        stats = _AssocStats(str(host), port, outcome=outcome)
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

    def _audit(self, write: Callable[..., int | None], stats: _AssocStats) -> int | None:
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

    def _count(self, event: evt.Event, outcome: str, study_uid: str | None = None) -> None:
        stats = self._stats.get(id(event.assoc))
        if stats is None:
            return
        setattr(stats, outcome, getattr(stats, outcome) + 1)
        if study_uid:
            stats.studies.add(study_uid)

    # ------------------------------------------------------------------ C-STORE

    def handle_store(self, event: evt.Event) -> int:
        """Admit → store → row → status (see module docstring); one place answers refusals."""
        stats = self._stats.get(id(event.assoc))
        if stats is not None:
            stats.pending_bytes = 0  # the next message starts counting afresh
        now = datetime.now(UTC)
        sop_uid = "?"
        try:
            admitted = intake.admit(event, self.rules, now)
            sop_uid = admitted.received.sop_uid
            return self._store(event, admitted, now)
        except Refusal as refusal:
            level = logging.ERROR if refusal.status == OUT_OF_RESOURCES else logging.WARNING
            log.log(level, "C-STORE refused: %s", refusal.reason)
            self._count(event, "failed")
            return refusal.status
        except Exception:  # noqa: BLE001 - never let a bug answer Success or kill the AE
            log.exception("C-STORE failed unexpectedly for instance %s", uid_hash(sop_uid))
            self._count(event, "failed")
            return OUT_OF_RESOURCES

    def _store(self, event: evt.Event, admitted: intake.Admitted, now: datetime) -> int:
        """Write the file (CT only) and the row (:func:`storing.keep`); Success only once both
        are durable."""
        study_uid = admitted.received.study_uid
        # The Part 10 file as received (pynetdicom adds the File Meta Information).
        parts = [event.encoded_dataset()] if admitted.is_ct else []
        status = storing.keep(
            self.sessions,
            self.store,
            admitted,
            parts,
            max_instance_bytes=self.settings.max_instance_bytes,
            skip_duplicate_positions=self.rules.settings.skip_duplicate_positions,
            known_ids=self.known_ids,
            now=now,
        )
        self._count(event, "skipped" if status == InstanceStatus.SKIPPED else "stored", study_uid)
        if status == InstanceStatus.QUEUED:
            self.on_stored()
        return SUCCESS


def _address_in(address: str, networks: list[str]) -> bool:
    """True if ``address`` lies in one of ``networks`` (addresses or CIDR networks)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if ip.version == 6 and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return any(ip in ipaddress.ip_network(n, strict=False) for n in networks)
