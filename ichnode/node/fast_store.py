"""C-STORE requests answered in the association's reader thread (the fast path).

pynetdicom carries each C-STORE through two threads and three queues: its DUL thread reads the
P-DATA-TF PDUs and queues them, its state machine queues the fragments, the association's
reactor (which polls every millisecond) assembles the message and calls the handler, and the
response goes back through the queues to the DUL thread, which sends it. With one association
a sender waits for each response before it sends the next instance, so every hop is on the
critical path: measured here, pynetdicom's machinery cost more per instance than Orthanc spent
in all (``docs/performance.md``).

Here, while an association is established (state Sta6), the DUL thread reads each P-DATA-TF
itself. A message whose command is a C-STORE-RQ with a data set, on an accepted presentation
context whose transfer syntax is not deflated, is assembled from the PDUs as they come, handed
to the same handler as pynetdicom's event would be (:meth:`FastStore.handle`: the checks, the
durable write and the commit run before it returns), and its C-STORE-RSP is sent from the
same thread. In Sta6 a P-DATA-TF received (Evt10) or sent (Evt9) leaves the state machine in
Sta6, so pynetdicom's state is as if it had handled the message itself.

Anything else is pynetdicom's, unchanged: every other PDU type (release, abort), every other
DIMSE message (C-ECHO), a deflated data set, and any message the fast path finds unusual (a
command split over PDUs in an unexpected way, a data-set fragment before its command, a change
of presentation context within a message, two messages in one PDU, a malformed command). Such a
message's PDUs are handed to pynetdicom exactly as they were read, in order, and the fast path
stands aside until that message has ended. The PDU cap (:mod:`ichnode.node.transport`) and the
receive cap on one message (:meth:`~ichnode.node.associations.Associations.receive_cap`) apply
on both paths.
"""

from __future__ import annotations

import logging
import select
import ssl
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import pynetdicom
from pydicom.uid import DeflatedExplicitVRLittleEndian
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider

from ichnode.node.file_meta import file_meta
from ichnode.node.transport import P_DATA_TF, PDU_TYPES

log = logging.getLogger(__name__)

#: PDV message control header bits (PS3.8 E.2).
_COMMAND, _LAST = 0x01, 0x02
#: Command Field values (PS3.7 E.1) and "no data set" (PS3.7 E.1: CommandDataSetType).
C_STORE_RQ, C_STORE_RSP = 0x0001, 0x8001
NO_DATA_SET = 0x0101
#: Command elements read (group 0000, implicit VR little endian).
_AFFECTED_SOP_CLASS = 0x0002
_COMMAND_FIELD = 0x0100
_MESSAGE_ID = 0x0110
_DATA_SET_TYPE = 0x0800
_AFFECTED_SOP_INSTANCE = 0x1000
#: A response must fit in one PDU of the peer's maximum length (0: no limit).
_SMALLEST_PEER_PDU = 1024
_STA6 = "Sta6"
#: Seconds the fast path waits for the peer's next PDU before handing the thread back to
#: pynetdicom's loop, in slices of POLL_SLICE (between them it checks for other work).
NEXT_PDU_WAIT = 0.05
POLL_SLICE = 0.01


@dataclass(frozen=True)
class StoreRequest:
    """One C-STORE request as received: its command's identifiers and its data set bytes."""

    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str
    dataset: bytes

    def file_meta(self) -> bytes:
        """Preamble, prefix and File Meta Information, as pynetdicom's
        ``Event.encoded_dataset()`` writes them (:mod:`ichnode.node.file_meta`)."""
        return file_meta(self.sop_class_uid, self.sop_instance_uid, self.transfer_syntax)


#: The store handler: the association and the request in, a DIMSE status out.
StoreHandler = Callable[[Association, StoreRequest], int]


class DataCounter(Protocol):
    """The receive cap (:class:`~ichnode.node.associations.Associations`)."""

    def data_received(self, assoc: Association, nbytes: int) -> bool:
        """Count a P-DATA-TF; False once the association is cut off (its socket closed)."""

    def message_handled(self, assoc: Association) -> None:
        """The next message starts counting afresh."""


class FastStore:
    """The fast path of one association (see module docstring); installed in its DUL."""

    def __init__(self, assoc: Association, handle: StoreHandler, counter: DataCounter) -> None:
        self.assoc = assoc
        self.dul: DULServiceProvider = assoc.dul
        self.handle = handle
        self.counter = counter
        self._original = self.dul._read_pdu_data
        self._pdus: list[bytearray] = []  # the current message's PDUs, as read
        self._command: list[bytes] = []
        self._data: list[memoryview] = []
        self._request: tuple[int, dict[int, bytes]] | None = None  # context id, command
        #: Handing PDUs to pynetdicom until the current message ends.
        self._passing = False
        self._passing_command: list[bytes] = []

    def install(self) -> bool:
        """Read this association's PDUs through :meth:`read_pdu`; False (pynetdicom's path
        for every message) when this pynetdicom lacks an internal the fast path uses."""
        missing = _missing_internals(self.assoc)
        if missing:
            _warn_once(f"pynetdicom {pynetdicom.__version__} lacks {', '.join(missing)}")
            return False
        self.dul._read_pdu_data = self.read_pdu  # type: ignore[method-assign]
        return True

    # ------------------------------------------------------------------ reading

    def read_pdu(self) -> None:
        """pynetdicom's ``DULServiceProvider._read_pdu_data``, with the P-DATA-TF of an
        established association kept here when the fast path can answer them.

        While the fast path takes the peer's PDUs it reads the next one as soon as it comes
        (:meth:`_next_arrives`), instead of returning to pynetdicom's loop, which sleeps a
        millisecond whenever a read leaves it no event to act on.
        """
        dul = self.dul
        if dul.state_machine.current_state != _STA6 or dul.socket is None:
            self._original()
            return
        # The association's reactor polls every millisecond for what this thread queues; while
        # this thread answers the peer itself it queues nothing, so the reactor waits at its
        # checkpoint (as it does for pynetdicom's own send_* methods) until control returns to
        # pynetdicom's loop. Association.kill() sets the checkpoint too.
        checkpoint = self.assoc._reactor_checkpoint
        checkpoint.clear()
        try:
            self._read_pdus()
        finally:
            checkpoint.set()

    def _read_pdus(self) -> None:
        """:meth:`read_pdu`'s loop: PDUs as long as the fast path takes them and the next one
        comes soon."""
        dul = self.dul
        while True:
            pdu = self._read_one()
            if pdu is None:
                return
            if pdu[0] != P_DATA_TF:
                self._to_pynetdicom(pdu)
                return
            if self._passing:
                self._pass_through(pdu)  # counted by pynetdicom's EVT_DATA_RECV
                return
            if not self.counter.data_received(self.assoc, len(pdu)):
                self._reset()  # cut off: its socket is closed (Evt17 queued)
                return
            self._pdus.append(pdu)
            if not self._take(pdu):
                self._stand_aside()
                return
            dul._idle_timer.restart()
            if not self._next_arrives():
                return

    def _read_one(self) -> bytearray | None:
        """One PDU from the socket, as pynetdicom reads it; None when an event (Evt17 or
        Evt19) was queued instead."""
        dul = self.dul
        sock = dul.socket
        if sock is None:
            dul.event_queue.put("Evt17")
            return None
        try:
            header = sock.recv(6)  # through the PDU cap (node.transport)
            if len(header) < 6:
                dul.event_queue.put("Evt17")  # closed, or refused by the PDU cap
                return None
            pdu_type, _, length = struct.unpack(">BBL", header)
            if pdu_type not in PDU_TYPES:
                log.error("unknown PDU type received 0x%02X", pdu_type)
                dul.event_queue.put("Evt19")
                return None
            pdu = header + sock.recv(length)
        except (OSError, TimeoutError):
            log.error("connection closed before the entire PDU was received")
            dul.event_queue.put("Evt17")
            return None
        if len(pdu) != 6 + length:
            dul.event_queue.put("Evt17")
            return None
        return pdu

    def _next_arrives(self) -> bool:
        """Wait up to :data:`NEXT_PDU_WAIT` for the peer's next PDU while pynetdicom has
        nothing else for this thread to do (a primitive to send, an event, a stop)."""
        dul = self.dul
        sock = dul.socket.socket if dul.socket is not None else None
        if sock is None:
            return False
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            return True
        poller = select.poll()
        poller.register(sock, select.POLLIN | select.POLLPRI)
        waited = 0.0
        while waited < NEXT_PDU_WAIT:
            if dul._kill_thread or not dul.to_provider_queue.empty():
                return False
            if not dul.event_queue.empty():
                return False
            if poller.poll(POLL_SLICE * 1000):
                return True
            waited += POLL_SLICE
        return False

    def _take(self, pdu: bytearray) -> bool:
        """Add one P-DATA-TF's fragments to the message being assembled; answer the message
        when it is complete. False when the message is not the fast path's."""
        items = _pdv_items(pdu)
        if items is None:
            return False
        for n, (context_id, control, fragment) in enumerate(items, 1):
            if control & _COMMAND:
                if self._request is not None:
                    return False  # a command while a data set was expected
                self._command.append(bytes(fragment))
                if control & _LAST:
                    command = _parse_command(b"".join(self._command))
                    if command is None or not self._is_fast(context_id, command):
                        return False
                    self._request = (context_id, command)
            else:
                if self._request is None or context_id != self._request[0]:
                    return False
                self._data.append(fragment)
                if control & _LAST:
                    if n != len(items):
                        return False  # another message in the same PDU
                    self._answer()
                    return True
        return True

    def _is_fast(self, context_id: int, command: dict[int, bytes]) -> bool:
        if _uint16(command.get(_COMMAND_FIELD)) != C_STORE_RQ:
            return False
        if _uint16(command.get(_DATA_SET_TYPE)) in (None, NO_DATA_SET):
            return False
        if _MESSAGE_ID not in command or _AFFECTED_SOP_INSTANCE not in command:
            return False
        context = self.assoc._accepted_cx.get(context_id)
        if context is None or context.transfer_syntax is None:
            return False
        if context.transfer_syntax[0] == DeflatedExplicitVRLittleEndian:
            return False  # pynetdicom inflates it
        peer_max = self.assoc.requestor.maximum_length
        return not (peer_max and peer_max < _SMALLEST_PEER_PDU)

    def _answer(self) -> None:
        """Hand the complete message to the handler; send its response."""
        assert self._request is not None
        context_id, command = self._request
        context = self.assoc._accepted_cx[context_id]
        request = StoreRequest(
            sop_class_uid=_uid(command.get(_AFFECTED_SOP_CLASS, b"")),
            sop_instance_uid=_uid(command[_AFFECTED_SOP_INSTANCE]),
            transfer_syntax=str(context.transfer_syntax[0]),
            dataset=b"".join(self._data),
        )
        self._reset()
        status = self.handle(self.assoc, request)
        response = encode_response(command, status)
        pdv = struct.pack(">LBB", len(response) + 2, context_id, _COMMAND | _LAST) + response
        if self.dul.socket is not None:
            self.dul.socket.send(struct.pack(">BBL", P_DATA_TF, 0, len(pdv)) + pdv)

    # ------------------------------------------------------------------ standing aside

    def _stand_aside(self) -> None:
        """Give the current message's PDUs to pynetdicom, and the rest of it as it comes."""
        pdus = self._pdus
        self._reset()
        self.counter.message_handled(self.assoc)  # pynetdicom counts these PDUs again
        self._passing = True
        for pdu in pdus:
            self._pass_through(pdu)

    def _pass_through(self, pdu: bytearray) -> None:
        """Hand ``pdu`` to pynetdicom; stop passing once the message it belongs to ended."""
        self._to_pynetdicom(pdu)
        if _ends_message(pdu, self._passing_command):
            self._passing = False
            self._passing_command = []

    def _to_pynetdicom(self, pdu: bytearray) -> None:
        """What pynetdicom's own read does with a PDU it has read (``_read_pdu_data``)."""
        dul = self.dul
        try:
            decoded, event = dul._decode_pdu(pdu)
        except Exception:  # noqa: BLE001 - as pynetdicom: an undecodable PDU is Evt19
            log.error("unable to decode the received PDU data")
            dul.event_queue.put("Evt19")
            return
        dul.event_queue.put(event)
        dul._recv_pdu.put(decoded)

    def _reset(self) -> None:
        self._pdus, self._command, self._data, self._request = [], [], [], None


#: pynetdicom internals the fast path reads or replaces (pynetdicom 3.0), by owner.
DUL_INTERNALS = (
    "_read_pdu_data",
    "_decode_pdu",
    "_recv_pdu",
    "_idle_timer",
    "_kill_thread",
    "event_queue",
    "to_provider_queue",
    "state_machine",
    "socket",
)
ASSOCIATION_INTERNALS = ("_accepted_cx", "_reactor_checkpoint", "requestor")
_warned: set[str] = set()


def _missing_internals(assoc: Association) -> list[str]:
    """The internals of :data:`DUL_INTERNALS` and :data:`ASSOCIATION_INTERNALS` that
    ``assoc`` (and its DUL) lack: a pynetdicom release that renamed one gets no fast path."""
    dul = getattr(assoc, "dul", None)
    missing = [f"DULServiceProvider.{n}" for n in DUL_INTERNALS if not hasattr(dul, n)]
    return missing + [f"Association.{n}" for n in ASSOCIATION_INTERNALS if not hasattr(assoc, n)]


def _warn_once(why: str) -> None:
    if why not in _warned:
        _warned.add(why)
        log.warning("C-STORE fast path off: %s; pynetdicom's own path answers", why)


def encode_response(command: dict[int, bytes], status: int) -> bytes:
    """A C-STORE-RSP command set (implicit VR little endian) answering ``command``."""
    body = b"".join(
        (
            _element(_AFFECTED_SOP_CLASS, command.get(_AFFECTED_SOP_CLASS, b"")),
            _element(_COMMAND_FIELD, struct.pack("<H", C_STORE_RSP)),
            _element(0x0120, command[_MESSAGE_ID]),  # Message ID Being Responded To
            _element(_DATA_SET_TYPE, struct.pack("<H", NO_DATA_SET)),
            _element(0x0900, struct.pack("<H", status)),
            _element(_AFFECTED_SOP_INSTANCE, command[_AFFECTED_SOP_INSTANCE]),
        )
    )
    return _element(0x0000, struct.pack("<L", len(body))) + body


def _element(element: int, value: bytes) -> bytes:
    return struct.pack("<HHL", 0x0000, element, len(value)) + value


def _parse_command(raw: bytes) -> dict[int, bytes] | None:
    """The group-0000 elements of a command set, by element number; None when malformed."""
    out: dict[int, bytes] = {}
    offset = 0
    while offset < len(raw):
        if offset + 8 > len(raw):
            return None
        group, element, length = struct.unpack_from("<HHL", raw, offset)
        offset += 8
        if group != 0x0000 or offset + length > len(raw):
            return None
        out[element] = raw[offset : offset + length]
        offset += length
    return out


def _pdv_items(pdu: bytearray) -> list[tuple[int, int, memoryview]] | None:
    """A P-DATA-TF's PDV items: (presentation context id, message control header, fragment);
    None when an item's length does not fit the PDU."""
    items = []
    view = memoryview(pdu)
    offset, end = 6, len(pdu)
    while offset < end:
        if offset + 6 > end:
            return None
        length, context_id, control = struct.unpack_from(">LBB", pdu, offset)
        stop = offset + 4 + length
        if length < 2 or stop > end:
            return None
        items.append((context_id, control, view[offset + 6 : stop]))
        offset = stop
    return items


def _ends_message(pdu: bytearray, command: list[bytes]) -> bool:
    """True when ``pdu`` holds the last fragment of a message: its data set's, or its
    command's when the command has no data set (``command`` gathers a split command). A
    malformed PDU ends it too (pynetdicom aborts the association on it)."""
    items = _pdv_items(pdu)
    if items is None:
        return True
    ended = False
    for _, control, fragment in items:
        if not control & _COMMAND:
            ended = ended or bool(control & _LAST)
            continue
        command.append(bytes(fragment))
        if control & _LAST:
            parsed = _parse_command(b"".join(command))
            command.clear()
            if parsed is None or _uint16(parsed.get(_DATA_SET_TYPE)) in (None, NO_DATA_SET):
                ended = True
    return ended


def _uint16(value: bytes | None) -> int | None:
    return struct.unpack("<H", value)[0] if value is not None and len(value) == 2 else None


def _uid(value: bytes) -> str:
    return value.rstrip(b"\x00 ").decode("ascii", "replace")
