"""The PDU cap: a PDU whose header claims more than we accept is refused from its header.

Raw sockets on loopback speak to a real in-process node: a real A-ASSOCIATE-RQ (pynetdicom's
own PDU encoding), then headers claiming absurd lengths. The node must answer A-ABORT and
close without reading the body, log one line, audit the connection, and keep serving.
"""

from __future__ import annotations

import logging
import socket
import struct

import pytest
from dicom_client import send
from helpers import study, wait_for
from pynetdicom.pdu import A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    MaximumLengthNotification,
)
from pynetdicom.presentation import build_context
from pynetdicom.sop_class import Verification

from ichnode.audit import list_associations
from ichnode.node.scp import SUCCESS
from ichnode.node.transport import ABORT_INVALID_PARAMETER, MAX_ASSOCIATE_PDU, pdu_limits

sqlite_only = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)

TRANSPORT_LOGGER = "ichnode.node.transport"
#: How long the client waits for the node's answer; far below the node's network timeout
#: (600 s below), so only an answer from the header (not a timeout) can arrive in time.
CLIENT_TIMEOUT = 30.0


def _associate_rq(called: str = "ICHNODE", calling: str = "TESTSCU") -> bytes:
    """An A-ASSOCIATE-RQ PDU for Verification, encoded by pynetdicom."""
    primitive = A_ASSOCIATE()
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    primitive.calling_ae_title = calling
    primitive.called_ae_title = called
    context = build_context(Verification)
    context.context_id = 1
    primitive.presentation_context_definition_list = [context]
    max_length = MaximumLengthNotification()
    max_length.maximum_length_received = 16384
    implementation = ImplementationClassUIDNotification()
    implementation.implementation_class_uid = "1.2.826.0.1.3680043.9.7433.1.1"
    primitive.user_information = [max_length, implementation]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(primitive)
    return pdu.encode()


def _read_pdu(sock: socket.socket) -> bytes:
    """One whole PDU from the peer (b'' if the connection closed first)."""
    header = _read_exactly(sock, 6)
    if len(header) < 6:
        return b""
    (length,) = struct.unpack(">L", header[2:])
    return header + _read_exactly(sock, length)


def _read_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def _closed(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def _outcomes(node) -> list[str]:  # noqa: ANN001
    with node.sessions() as session:
        return [r["outcome"] for r in list_associations(session) if r["ended_at"]]


def _node(factory):  # noqa: ANN001, ANN202
    # Long timeouts: if the node waited for the claimed body, the client's wait would end first.
    return factory(max_pdu=16384, network_timeout=600.0, idle_timeout=600.0)


@sqlite_only
def test_p_data_claiming_2_gib_after_association_is_aborted_from_its_header(scp_factory, caplog):
    caplog.set_level(logging.WARNING, logger=TRANSPORT_LOGGER)
    node = _node(scp_factory)
    with socket.create_connection(("127.0.0.1", node.settings.port), timeout=CLIENT_TIMEOUT) as s:
        s.sendall(_associate_rq())
        assert _read_pdu(s)[0] == 0x02  # A-ASSOCIATE-AC
        s.sendall(struct.pack(">BBL", 0x04, 0, 2**31) + b"\x00\x00\x00\x10\x01\x03")
        assert _read_pdu(s) == ABORT_INVALID_PARAMETER
        assert _closed(s)
    refused = [r for r in caplog.records if r.name == TRANSPORT_LOGGER]
    assert len(refused) == 1
    assert "PDU type 0x04 claims 2147483648 bytes, over the 16384 we accept" in refused[0].message
    assert "aborted: PDU over the size limit" in wait_for(lambda: _outcomes(node))
    assert send(node.settings.port, study(2, size=64)) == [SUCCESS, SUCCESS]


@sqlite_only
def test_a_p_data_one_byte_over_the_advertised_max_is_refused(scp_factory):
    node = _node(scp_factory)
    with socket.create_connection(("127.0.0.1", node.settings.port), timeout=CLIENT_TIMEOUT) as s:
        s.sendall(_associate_rq())
        assert _read_pdu(s)[0] == 0x02
        s.sendall(struct.pack(">BBL", 0x04, 0, 16384 + 1))
        assert _read_pdu(s) == ABORT_INVALID_PARAMETER
        assert _closed(s)
    # A full-size PDU is fine: pynetdicom's SCU fills PDUs up to the advertised maximum.
    assert send(node.settings.port, study(1, size=256)) == [SUCCESS]


@sqlite_only
def test_an_absurdly_long_association_request_is_aborted_before_it_is_read(scp_factory, caplog):
    caplog.set_level(logging.WARNING, logger=TRANSPORT_LOGGER)
    node = _node(scp_factory)
    request = _associate_rq()
    claimed = 0xFFFFFFFF
    with socket.create_connection(("127.0.0.1", node.settings.port), timeout=CLIENT_TIMEOUT) as s:
        # A real request's start, with the length field claiming 4 GiB.
        s.sendall(request[:2] + struct.pack(">L", claimed) + request[6:])
        assert _read_pdu(s) == ABORT_INVALID_PARAMETER
        assert _closed(s)
        # The node read no body: more bytes go nowhere (the connection is gone).
        with pytest.raises(OSError):
            for _ in range(256):
                s.sendall(b"\x00" * (1 << 20))
    assert any(
        f"PDU type 0x01 claims {claimed} bytes, over the {MAX_ASSOCIATE_PDU}" in r.message
        for r in caplog.records
    )
    assert "aborted: PDU over the size limit" in wait_for(lambda: _outcomes(node))
    assert send(node.settings.port, study(1, size=64)) == [SUCCESS]


def test_limits_follow_the_advertised_max_pdu() -> None:
    assert pdu_limits(16384)[0x04] == 16384
    assert pdu_limits(0)[0x04] > 16384  # "unlimited" is still bounded
    assert pdu_limits(16384)[0x01] == MAX_ASSOCIATE_PDU
