"""The listening socket's guards: socket timeouts, TLS off the accept loop, the PDU cap.

pynetdicom reads a PDU's 6-byte header, then as many bytes as its 32-bit length claims
(up to 4 GiB) before any ichnode code sees it. Here each association's socket checks that
length against what we accept (the max PDU size we advertised for P-DATA-TF, a fixed bound
for the other PDU types) and, when it is over, answers A-ABORT and closes the connection
without reading the body.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import struct
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, cast

from pynetdicom.association import Association
from pynetdicom.transport import (
    AddressInformation,
    AssociationSocket,
    RequestHandler,
    ThreadedAssociationServer,
)

from ichnode.node.tls import ReloadingContext

log = logging.getLogger(__name__)

#: PDU types (PS3.8 9.3.1).
A_ASSOCIATE_RQ, A_ASSOCIATE_AC, A_ASSOCIATE_RJ, P_DATA_TF = 0x01, 0x02, 0x03, 0x04
A_RELEASE_RQ, A_RELEASE_RP, A_ABORT = 0x05, 0x06, 0x07
#: Every PDU type a peer may send; any other is an invalid PDU.
PDU_TYPES = (
    A_ASSOCIATE_RQ,
    A_ASSOCIATE_AC,
    A_ASSOCIATE_RJ,
    P_DATA_TF,
    A_RELEASE_RQ,
    A_RELEASE_RP,
    A_ABORT,
)
#: Largest A-ASSOCIATE-RQ/AC we read: 128 presentation contexts with a dozen transfer
#: syntaxes each, user identity and extended negotiation fit many times over.
MAX_ASSOCIATE_PDU = 1 << 20
#: A-ASSOCIATE-RJ, A-RELEASE-RQ/RP and A-ABORT are 4 bytes long (PS3.8 9.3.4, 9.3.6-9.3.8).
MAX_SHORT_PDU = 1 << 10
#: The A-ABORT we send (PS3.8 9.3.8): source service provider (2), invalid PDU parameter
#: value (6).
ABORT_INVALID_PARAMETER = struct.pack(">BBLBBBB", A_ABORT, 0, 4, 0, 0, 2, 6)
#: When ``max_pdu`` is 0 (unlimited), a P-DATA-TF body may be as large as this.
UNLIMITED_P_DATA = 1 << 28
#: On a listening socket shared by receiver processes, a process that holds more connections
#: than another waits this long before it accepts, so that the less busy one takes it.
ACCEPT_DEFER = 0.05
#: The load of a slot whose process is gone: more than any process holds.
VACANT = 2**31 - 1


def pdu_limits(max_pdu: int) -> dict[int, int]:
    """Largest PDU length (the header's length field) we read, by PDU type.

    ``max_pdu``: the maximum length we advertised (0: unlimited, bounded here anyway).
    """
    return {
        A_ASSOCIATE_RQ: MAX_ASSOCIATE_PDU,
        A_ASSOCIATE_AC: MAX_ASSOCIATE_PDU,
        A_ASSOCIATE_RJ: MAX_SHORT_PDU,
        P_DATA_TF: max_pdu or UNLIMITED_P_DATA,
        A_RELEASE_RQ: MAX_SHORT_PDU,
        A_RELEASE_RP: MAX_SHORT_PDU,
        A_ABORT: MAX_SHORT_PDU,
    }


class PduGuard:
    """Replaces one :class:`AssociationSocket`'s ``recv``: refuses an oversized PDU by header.

    pynetdicom's DUL reads a PDU as ``recv(6)`` (the header) then ``recv(length)``; this
    follows that alternation. A header whose length is over the limit for its type is
    answered with A-ABORT, the connection is shut down, and a short read is returned, which
    the DUL treats as a closed connection (no body is read, nothing is buffered).
    """

    def __init__(
        self,
        sock: AssociationSocket,
        limits: dict[int, int],
        on_refused: Callable[[Association, str], None] | None = None,
    ) -> None:
        self.sock = sock
        self.limits = limits
        self.on_refused = on_refused
        self._read = sock.recv
        self._want_header = True

    def __call__(self, nr_bytes: int) -> bytearray:
        if not self._want_header or nr_bytes != 6:
            self._want_header = True
            return self._read_body(nr_bytes)
        header = self._read(6)
        if len(header) < 6:
            return header
        pdu_type, _, length = struct.unpack(">BBL", header)
        limit = self.limits.get(pdu_type)
        if limit is None:
            return header  # an unknown type: the DUL aborts without reading a body
        if length > limit:
            self._refuse(pdu_type, length, limit)
            return bytearray()
        self._want_header = False
        return header

    def _read_body(self, nr_bytes: int) -> bytearray:
        """Read a PDU body (its length already checked) into one buffer of its size.

        pynetdicom reads in 4 KiB pieces and grows a bytearray; with the length bounded, one
        buffer of the right size and ``recv_into`` do the same in far fewer calls. A short
        result means the connection closed, as for pynetdicom's own read.
        """
        raw = self.sock.socket
        if raw is None:
            return bytearray()
        buffer = bytearray(nr_bytes)
        view = memoryview(buffer)
        done = 0
        while done < nr_bytes:
            got = raw.recv_into(view[done:])
            if not got:
                del view
                return buffer[:done]
            done += got
        return buffer

    def _refuse(self, pdu_type: int, length: int, limit: int) -> None:
        assoc = self.sock.assoc
        reason = f"PDU type 0x{pdu_type:02X} claims {length} bytes, over the {limit} we accept"
        log.warning("connection from %s aborted: %s", _peer(assoc), reason)
        raw = self.sock.socket
        if raw is not None:
            with contextlib.suppress(OSError):
                raw.sendall(ABORT_INVALID_PARAMETER)
            with contextlib.suppress(OSError):
                raw.shutdown(socket.SHUT_RDWR)
        if self.on_refused is not None:
            self.on_refused(assoc, reason)


def _peer(assoc: Association) -> str:
    info = getattr(assoc.requestor, "address_info", None)
    return str(getattr(info, "address", "?"))


class GuardedRequestHandler(RequestHandler):
    """pynetdicom's request handler; the association's socket gets a :class:`PduGuard`."""

    server: GuardedServer

    def _create_association(self) -> Association:
        assoc = super()._create_association()
        sock = assoc.dul.socket
        if sock is not None:
            sock.recv = PduGuard(  # type: ignore[method-assign]
                sock, pdu_limits(self.ae.maximum_pdu_size), self.server.on_pdu_refused
            )
        if self.server.fast_store is not None:
            self.server.fast_store(assoc)
        if self.server.listening is not None:
            self.server.connection_to_association(assoc)
        return assoc


class GuardedServer(ThreadedAssociationServer):
    """pynetdicom's threaded server with guards against peers that stall, probe or overreach.

    pynetdicom leaves accepted sockets blocking without a timeout, so a peer that sends half a
    PDU holds its thread and an association slot forever; it runs the TLS handshake in the
    accept loop, so one silent peer on a TLS port blocks every later connection; it gives
    a connection an association slot before it has asked for anything; and it reads a PDU of
    any claimed length. Here every accepted socket gets ``io_timeout`` (the network timeout),
    the handshake runs in the connection's own thread, the connection becomes an association
    only once the peer has sent something, and a PDU over :func:`pdu_limits` is refused from
    its header (``on_pdu_refused`` gets the association and why). A failed handshake and a
    connection that sent nothing are reported to ``on_handshake_failed`` / ``on_no_request``
    (address, reason), for the audit trail. With ``tls`` set, each connection gets its current
    context (the files may have been renewed since the start).
    """

    io_timeout: float = 60.0
    on_handshake_failed: Callable[[object, str], None] | None = None
    on_no_request: Callable[[object, str], None] | None = None
    on_pdu_refused: Callable[[Association, str], None] | None = None
    #: Installs the C-STORE fast path in a new association (:mod:`ichnode.node.fast_store`).
    fast_store: Callable[[Association], None] | None = None
    tls: ReloadingContext | None = None

    def __init__(self, *args: Any, listening: SharedListener | None = None, **kwargs: Any) -> None:
        #: The listening socket shared with the node's other receiver processes, accepted on
        #: instead of binding the address.
        self.listening = listening
        self._connections = 0  # accepted and not yet closed (counted where shared)
        self._connections_lock = threading.Lock()
        self._handed_over = threading.local()  # the association this connection's thread made
        kwargs.setdefault("request_handler", GuardedRequestHandler)
        super().__init__(*args, **kwargs)

    def server_bind(self) -> None:
        if self.listening is None:
            super().server_bind()
            return
        if self.socket is not None:  # the one socketserver made: the shared one replaces it
            self.socket.close()
        self.socket = self.listening.sock
        self.server_address = self.socket.getsockname()

    def server_activate(self) -> None:
        if self.listening is None:
            super().server_activate()

    def server_close(self) -> None:
        if self.listening is None:
            super().server_close()
        elif self.socket is not None:  # no shutdown(): it would stop the others' listening too
            self.socket.close()

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        if self.listening is not None and self.listening.busier():
            # Every process's accept loop woke for this connection: let a less busy one take
            # it (the loser's accept raises BlockingIOError, which socketserver ignores).
            time.sleep(ACCEPT_DEFER)
        if self.socket is None:
            raise OSError("the server's socket is closed")  # socketserver skips this request
        client, address = self.socket.accept()
        client.settimeout(self.io_timeout)
        if self.tls is not None:
            self.ssl_context = self.tls.current()
        if self.ssl_context:
            client = self.ssl_context.wrap_socket(
                client, server_side=True, do_handshake_on_connect=False
            )
        self._count_connection(+1)
        return client, address

    def _count_connection(self, change: int) -> None:
        if self.listening is None:
            return
        with self._connections_lock:
            self._connections += change
            self.listening.publish(self._connections)

    def connection_to_association(self, assoc: Association) -> None:
        """The connection became ``assoc``: it is counted until the association's thread
        ends (where shared, the other processes see it close)."""
        self._handed_over.assoc = assoc
        run = assoc.run

        def run_then_count() -> None:
            try:
                run()
            finally:
                self._count_connection(-1)

        assoc.run = run_then_count  # type: ignore[method-assign]

    def process_request_thread(
        self,
        request: socket.socket | tuple[bytes, socket.socket],
        client_address: tuple[str, int] | str,
    ) -> None:
        self._handed_over.assoc = None
        try:
            self._serve_connection(cast(socket.socket, request), client_address)  # TCP only
        finally:
            assoc = self._handed_over.assoc
            # Dropped before it became an association, or its thread never started (start()
            # raised): no run_then_count will uncount it.
            if assoc is None or assoc.ident is None:
                self._count_connection(-1)

    def handle_error(
        self,
        request: socket.socket | tuple[bytes, socket.socket],
        client_address: tuple[str, int] | str,
    ) -> None:
        """One log line for a connection that failed (socketserver prints a traceback to
        stderr): e.g. its association's thread could not be started. The server goes on."""
        exc = sys.exc_info()[1]
        log.error("connection from %s failed: %s: %s", client_address, type(exc).__name__, exc)

    def _serve_connection(
        self, request: socket.socket, client_address: tuple[str, int] | str
    ) -> None:
        if isinstance(request, ssl.SSLSocket):
            try:
                request.do_handshake()
            except (OSError, ssl.SSLError) as exc:
                reason = str(getattr(exc, "reason", None) or type(exc).__name__)
                log.warning("TLS handshake with %s failed: %s", client_address, reason)
                self.shutdown_request(request)
                if self.on_handshake_failed is not None:
                    self.on_handshake_failed(client_address, reason)
                return
        silent = self._no_request(request)
        if silent is not None:
            log.debug("connection from %s dropped: %s", client_address, silent)  # audited
            self.shutdown_request(request)
            if self.on_no_request is not None:
                self.on_no_request(client_address, silent)
            return
        super().process_request_thread(request, client_address)

    def _no_request(self, request: socket.socket) -> str | None:
        """Wait for the peer's first bytes; None once they came, else why to drop it.

        pynetdicom's association waits ``acse_timeout`` for an A-ASSOCIATE-RQ even after the
        peer has gone, holding an association slot; so a few port probes (a load balancer's
        TCP health check) could refuse every sender for that long. Here a connection takes a
        slot only once it has sent something. Under TLS the raw socket is peeked: a peer that
        closes sends no TLS record, only the end of the stream.
        """
        timeout = self.ae.acse_timeout
        if isinstance(request, ssl.SSLSocket) and request.pending():
            return None
        request.settimeout(timeout)  # no select(): it fails on descriptors past 1024
        try:
            first = socket.socket.recv(request, 1, socket.MSG_PEEK)
        except TimeoutError:
            return f"nothing sent within {timeout:g} s"
        except OSError as exc:
            return f"connection error ({exc})"
        finally:
            request.settimeout(self.io_timeout)
        return None if first else "closed without sending anything"


class SharedListener:
    """A listening socket shared by the node's receiver processes, and how many connections
    each of them holds open (``loads``, shared memory; this process's is ``loads[slot]``).

    Non-blocking, so that when a connection wakes every process's accept loop, those that lose
    the race to accept it go back to waiting; a process holding more connections than another
    lets that one go first (:data:`ACCEPT_DEFER`), so parallel associations spread by load
    rather than by a hash of their ports (``SO_REUSEPORT``'s way). The node's own process (slot
    0), which also runs the web, the monitor and the rest, lets the receivers go first on a tie:
    an association received there took 10-30 % more CPU (measured on a noisy host). Every
    process must keep the socket non-blocking: the flag belongs to the socket, not to one
    process's descriptor.
    """

    def __init__(self, sock: socket.socket, loads: Any, slot: int = 0) -> None:
        self.sock = sock
        self.loads = loads
        self.slot = slot

    @classmethod
    def bind(cls, bind: str, port: int, processes: int, context: Any) -> SharedListener:
        """Listen on ``bind:port`` for ``processes`` processes (``context``: the
        multiprocessing context that starts them)."""
        family = AddressInformation.from_tuple((bind, port)).address_family  # as pynetdicom
        sock = socket.create_server(
            (bind, port), family=family, backlog=GuardedServer.request_queue_size
        )
        sock.setblocking(False)
        return cls(sock, context.RawArray("i", processes))

    def for_process(self, slot: int) -> SharedListener:
        """The same socket (a descriptor of its own, which outlives this process's server,
        for restarts; :meth:`close` it) and loads, as seen by process ``slot``."""
        return SharedListener(self.sock.dup(), self.loads, slot)

    def close(self) -> None:
        """Close this descriptor of the socket (the others keep listening)."""
        self.sock.close()

    def adopt(self) -> None:
        """In a process that starts on this (pickled to it): keep the socket non-blocking;
        nothing open here yet (a receiver that died may have left its count behind)."""
        self.sock.setblocking(False)
        self.loads[self.slot] = 0

    def vacate(self) -> None:
        """The process of this slot is gone (until a restart adopts it): no process defers
        to it, whatever count it left behind (0 would make every busier one wait
        :data:`ACCEPT_DEFER` for a taker that never comes)."""
        self.loads[self.slot] = VACANT

    def busier(self) -> bool:
        """Whether another process should take the next connection: one holds fewer than this
        one (for the node's own process, slot 0: as few)."""
        mine = self.loads[self.slot]
        if self.slot == 0:
            return any(mine >= load for load in self.loads[1:])
        return mine > min(self.loads)

    def publish(self, load: int) -> None:
        """This process holds ``load`` connections now (each process publishes its own, when
        it accepts a connection and when one closes)."""
        self.loads[self.slot] = load


def start_server(server: GuardedServer) -> threading.Thread:
    """Serve ``server`` in a background thread (what ``AE.start_server`` does, minus blocking)."""
    server.ae._servers.append(server)  # server.shutdown() removes it
    thread = threading.Thread(target=server.serve_forever, name="scp-accept", daemon=True)
    thread.start()
    return thread
