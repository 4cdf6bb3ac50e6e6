"""The pynetdicom C-STORE SCP: receive, check, store durably, enqueue, then answer.

The C-STORE handler is short: header read and checked (``node.intake``) → the bytes as
received written (temp file, fsync, rename, fsync of the folder) → instance row committed with
status ``queued`` (``node.storing``) → Success. It is called by the fast path
(``node.fast_store``: the association's reader thread answers C-STOREs itself) and by
pynetdicom's ``EVT_C_STORE`` for the messages the fast path leaves to pynetdicom. Storage or
database trouble answers 0xA700 and leaves neither an orphan file nor an orphan row. Every
refusal is one ``intake.Refusal`` turned into the answer and the log line in one place. Who may
associate, the limits and the audit rows are ``node.associations``'s; the guarded server is
``node.transport``'s.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import cast

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
from pynetdicom.association import Association
from pynetdicom.presentation import AllStoragePresentationContexts
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from sqlalchemy.orm import sessionmaker

from ichnode.config import Settings
from ichnode.db.models import InstanceStatus
from ichnode.imaging import CT_SOP_CLASSES
from ichnode.node import intake, storing
from ichnode.node.associations import (  # noqa: F401 - importable from here as before
    CALLED_AE_NOT_RECOGNISED,
    CALLING_AE_NOT_RECOGNISED,
    LOCAL_LIMIT_EXCEEDED,
    REJECTED_PERMANENT,
    REJECTED_TRANSIENT,
    SOURCE_PRESENTATION,
    SOURCE_SERVICE_USER,
    TEMPORARY_CONGESTION,
    Associations,
)
from ichnode.node.fast_store import FastStore, StoreRequest
from ichnode.node.intake import Refusal
from ichnode.node.statuses import (  # noqa: F401 - the statuses, importable from here as before
    CANNOT_UNDERSTAND,
    DATASET_DOES_NOT_MATCH,
    OUT_OF_RESOURCES,
    SUCCESS,
)
from ichnode.node.tls import ReloadingContext
from ichnode.node.transport import GuardedServer, SharedListener, start_server
from ichnode.store import Store, uid_hash

log = logging.getLogger(__name__)

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
        self.sessions = sessions
        self.on_stored = on_stored or (lambda: None)
        self.keeper = storing.Keeper(settings, store, sessions)
        self.associations = Associations(settings, sessions)
        self.server: GuardedServer | None = None

    def build_ae(self) -> AE:
        s = self.settings
        ae = AE(ae_title=s.ae_title)
        ae.add_supported_context(Verification)
        for uid in sorted(CT_SOP_CLASSES):
            ae.add_supported_context(uid, CT_TRANSFER_SYNTAXES)
        if s.accept_other_objects:
            for cx in AllStoragePresentationContexts:
                if cx.abstract_syntax and cx.abstract_syntax not in CT_SOP_CLASSES:
                    ae.add_supported_context(cx.abstract_syntax, OTHER_TRANSFER_SYNTAXES)
        self.associations.configure(ae)
        return ae

    def handlers(self) -> list:
        return [
            (evt.EVT_C_ECHO, lambda event: SUCCESS),
            (evt.EVT_C_STORE, self.handle_store),
            *self.associations.handlers(),
        ]

    def receive_cap(self) -> int:
        """Bytes of one message past which the association is cut off."""
        return self.associations.receive_cap()

    def start(
        self, tls: ReloadingContext | None = None, listening: SharedListener | None = None
    ) -> GuardedServer:
        """Start listening in background threads; returns the (pynetdicom) server.

        ``tls``: the listening port's TLS context, which follows its files (None: no TLS).
        ``listening``: accept on this socket, shared with the node's other receiver processes
        (:class:`~ichnode.node.transport.SharedListener`), instead of binding bind:port.
        """
        s = self.settings
        server = cast(
            GuardedServer,
            self.build_ae().make_server(
                (s.bind, s.port),
                evt_handlers=self.handlers(),
                ssl_context=tls.current() if tls else None,
                server_class=GuardedServer,
                listening=listening,
            ),
        )
        server.tls = tls
        server.fast_store = self._install_fast_store if s.fast_store else None
        self.associations.watch(server)
        start_server(server)
        self.server = server
        return server

    def shutdown(self) -> None:
        """Stop accepting; in-flight C-STOREs finish (pynetdicom joins association threads)."""
        if self.server is not None:
            self.server.shutdown()
            self.server = None

    def handle_store(self, event: evt.Event) -> int:
        """pynetdicom's ``EVT_C_STORE``: the messages the fast path leaves to pynetdicom."""
        return self._receive(
            event.assoc,
            lambda now: intake.admit(event, self.keeper.rules, now),
            # The Part 10 file as received (pynetdicom adds the File Meta Information).
            lambda: [event.encoded_dataset()],
        )

    def handle_fast(self, assoc: Association, request: StoreRequest) -> int:
        """A C-STORE request from the fast path (:mod:`ichnode.node.fast_store`)."""
        received = intake.Request(
            sop_instance_uid=request.sop_instance_uid,
            sop_class_uid=request.sop_class_uid,
            transfer_syntax=request.transfer_syntax,
            calling_ae=assoc.requestor.ae_title,
            calling_address=assoc.requestor.address,
        )
        return self._receive(
            assoc,
            lambda now: intake.admit_encoded(request.dataset, received, self.keeper.rules, now),
            lambda: [request.file_meta(), request.dataset],
        )

    def _receive(
        self,
        assoc: Association,
        admit: Callable[[datetime], intake.Admitted],
        encoded: Callable[[], list[bytes]],
    ) -> int:
        """Admit → store → row → status (see module docstring); one place answers refusals.
        ``encoded``: the Part 10 file's parts, asked for only when a CT instance is kept."""
        self.associations.message_handled(assoc)
        now = datetime.now(UTC)
        sop_uid = "?"
        try:
            admitted = admit(now)
            sop_uid = admitted.received.sop_uid
            return self._store(assoc, admitted, encoded, now)
        except Refusal as refusal:
            level = logging.ERROR if refusal.status == OUT_OF_RESOURCES else logging.WARNING
            log.log(level, "C-STORE refused: %s", refusal.reason)
            self.associations.count(assoc, "failed")
            return refusal.status
        except Exception:  # noqa: BLE001 - never let a bug answer Success or kill the AE
            log.exception("C-STORE failed unexpectedly for instance %s", uid_hash(sop_uid))
            self.associations.count(assoc, "failed")
            return OUT_OF_RESOURCES

    def _store(
        self,
        assoc: Association,
        admitted: intake.Admitted,
        encoded: Callable[[], list[bytes]],
        now: datetime,
    ) -> int:
        """Write the file (CT only) and the row (:func:`storing.keep`); Success only once both
        are durable."""
        study_uid = admitted.received.study_uid
        parts = encoded() if admitted.is_ct else []
        status = self.keeper.keep(admitted, parts, now)
        self.associations.count(
            assoc, "skipped" if status == InstanceStatus.SKIPPED else "stored", study_uid
        )
        if status == InstanceStatus.QUEUED:
            self.on_stored()
        return SUCCESS

    def _install_fast_store(self, assoc: Association) -> None:
        """Give a new association the fast path (``fast_store``), unless pynetdicom logs at
        DEBUG (``ichnode --debug``): its path logs every PDU and DIMSE message, the fast
        path none, and whoever debugs an association expects to see them."""
        if logging.getLogger("pynetdicom").isEnabledFor(logging.DEBUG):
            return
        FastStore(assoc, self.handle_fast, self.associations).install()
