"""Limits of the listener, each attempted through real associations: concurrent associations,
advertised PDU size, instance size, free disk space, idle and network timeouts.

The backend does not matter here: the tests run on SQLite only.
"""

from __future__ import annotations

import logging
import socket
import time

import pytest
from dicom_client import echo, send
from helpers import study, wait_for
from pynetdicom import AE
from pynetdicom.sop_class import Verification
from sqlalchemy import func, select

from ichnode.audit import list_associations
from ichnode.db.models import Instance
from ichnode.node.associations import LOCAL_LIMIT_EXCEEDED, TEMPORARY_CONGESTION
from ichnode.node.statuses import OUT_OF_RESOURCES, SUCCESS

pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)

REJECTED_TRANSIENT, SOURCE_PRESENTATION = 0x02, 0x03


def _open(port: int, calling: str = "TESTSCU"):  # noqa: ANN202
    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    return ae.associate("127.0.0.1", port, ae_title="ICHNODE")


def _n_instances(node) -> int:  # noqa: ANN001
    with node.sessions() as session:
        return session.scalar(select(func.count()).select_from(Instance))


def _store_is_empty(node) -> bool:  # noqa: ANN001
    return not [p for p in node.store.root.rglob("*") if p.is_file()]


def _assert_rejected_transient(assoc, reason: int) -> None:  # noqa: ANN001
    """A-ASSOCIATE-RJ: rejected-transient, by the service provider (presentation), ``reason``."""
    assert assoc.is_rejected
    rj = assoc.acceptor.primitive
    assert (rj.result, rj.result_source, rj.diagnostic) == (
        REJECTED_TRANSIENT,
        SOURCE_PRESENTATION,
        reason,
    )


def _outcomes(node) -> list[str]:  # noqa: ANN001
    with node.sessions() as session:
        return [r["outcome"] for r in list_associations(session) if r["ended_at"]]


def test_association_beyond_max_associations_is_rejected_local_limit_exceeded(scp_factory):
    node = scp_factory(max_associations=2)
    port = node.settings.port
    held = [_open(port), _open(port)]
    assert all(a.is_established for a in held)
    _assert_rejected_transient(_open(port), LOCAL_LIMIT_EXCEEDED)
    for assoc in held:
        assoc.release()
    assert wait_for(lambda: echo(port) == SUCCESS)  # room again
    assert "rejected: too many associations" in wait_for(lambda: _outcomes(node))


def test_a_peer_over_its_association_rate_is_rejected_as_temporary_congestion(scp_factory):
    node = scp_factory(max_associations_per_minute=3)
    port = node.settings.port
    assert [echo(port) for _ in range(3)] == [SUCCESS] * 3
    _assert_rejected_transient(_open(port), TEMPORARY_CONGESTION)
    outcomes = wait_for(
        lambda: [o for o in _outcomes(node) if o.startswith("rejected")] and _outcomes(node)
    )
    assert outcomes.count("rejected: too many association requests from this peer") == 1
    assert outcomes.count("released") == 3


def test_advertised_max_pdu_is_the_configured_one_and_large_instances_still_arrive(scp_factory):
    node = scp_factory(max_pdu=16384)
    assoc = _open(node.settings.port)
    assert assoc.acceptor.maximum_length == 16384
    assoc.release()
    assert send(node.settings.port, study(1, size=256)) == [SUCCESS]  # 128 KiB in 16 KiB PDUs


def test_instance_over_max_instance_bytes_is_a700_and_nothing_is_kept(scp_factory):
    node = scp_factory(max_instance_bytes=20_000)
    assert send(node.settings.port, study(1, size=128)) == [OUT_OF_RESOURCES]  # 32 KiB pixels
    assert _n_instances(node) == 0 and _store_is_empty(node)
    assert send(node.settings.port, study(1, size=32)) == [SUCCESS]  # small ones still fine


def test_a_message_far_over_the_limit_is_cut_off_before_it_is_all_in_memory(scp_factory, caplog):
    caplog.set_level(logging.WARNING, logger="ichnode.node.associations")
    node = scp_factory(max_instance_bytes=20_000)
    assert node.scp.receive_cap() < 2_000_000
    # 2 MiB of pixels: pynetdicom would buffer all of it before the C-STORE handler runs.
    assert send(node.settings.port, study(1, size=1024)) == [-1]  # no answer: cut off
    assert "cut off: one message passed" in caplog.text
    assert "aborted: message over the receive limit" in wait_for(lambda: _outcomes(node))
    assert _n_instances(node) == 0 and _store_is_empty(node)
    # The node carries on; a slightly oversized instance still gets its proper status.
    assert send(node.settings.port, study(1, size=128)) == [OUT_OF_RESOURCES]
    assert send(node.settings.port, study(2, size=32)) == [SUCCESS, SUCCESS]


def test_free_space_below_minimum_is_a700_without_a_half_written_file(scp_factory):
    node = scp_factory(min_free_bytes=10**18)
    assert send(node.settings.port, study(2, size=32)) == [OUT_OF_RESOURCES] * 2
    assert _n_instances(node) == 0 and _store_is_empty(node)
    assert echo(node.settings.port) == SUCCESS


def test_idle_association_is_aborted_after_idle_timeout(scp_factory):
    node = scp_factory(idle_timeout=1.0)
    assoc = _open(node.settings.port)
    assert assoc.is_established
    started = time.monotonic()
    wait_for(lambda: not assoc.is_established, timeout=15)
    assert assoc.is_aborted and time.monotonic() - started < 10
    assert "aborted" in wait_for(lambda: _outcomes(node))


def test_peer_that_connects_and_sends_nothing_is_dropped_after_network_timeout(scp_factory):
    node = scp_factory(network_timeout=1.0)
    with socket.create_connection(("127.0.0.1", node.settings.port), timeout=15) as sock:
        started = time.monotonic()
        assert sock.recv(1024) == b""  # the node closed the connection
        assert time.monotonic() - started < 10
    assert echo(node.settings.port) == SUCCESS
    assert "no association request (nothing sent within 1 s)" in wait_for(lambda: _outcomes(node))


def test_connections_that_close_unused_take_no_association_slot(scp_factory):
    # A load balancer's TCP health check, or a port scan: connect, then close. pynetdicom
    # kept each one as an association for network_timeout (60 s here), so a dozen of them
    # refused every sender for a minute as "too many associations".
    node = scp_factory(max_associations=2, network_timeout=60.0)
    port = node.settings.port
    for _ in range(6):
        socket.create_connection(("127.0.0.1", port)).close()
    started = time.monotonic()
    assert echo(port) == SUCCESS
    assert send(port, study(2, size=32)) == [SUCCESS, SUCCESS]
    assert time.monotonic() - started < 30  # not after the probes' network_timeout
    probes = wait_for(
        lambda: [o for o in _outcomes(node) if o.startswith("no association request")] or None
    )
    assert probes[0] == "no association request (closed without sending anything)"


def test_peer_that_sends_half_a_pdu_is_dropped(scp_factory):
    node = scp_factory(network_timeout=1.0, idle_timeout=1.0)
    with socket.create_connection(("127.0.0.1", node.settings.port), timeout=15) as sock:
        sock.sendall(b"\x01\x00\x00\x00\x10\x00")  # A-ASSOCIATE-RQ header, then silence
        started = time.monotonic()
        try:
            data = sock.recv(1024)
        except ConnectionResetError:
            data = b""
        while data:  # an A-ABORT may come first; then the close
            data = sock.recv(1024)
        assert time.monotonic() - started < 10
    assert echo(node.settings.port) == SUCCESS


def test_stalled_peers_cannot_hold_every_association_slot(scp_factory):
    node = scp_factory(max_associations=2, network_timeout=1.0, idle_timeout=1.0)
    stalled = [socket.create_connection(("127.0.0.1", node.settings.port)) for _ in range(3)]
    try:
        for sock in stalled:
            sock.sendall(b"\x01\x00\x00\x00\x10\x00")
        assert wait_for(lambda: _open(node.settings.port).is_established, timeout=10)
    finally:
        for sock in stalled:
            sock.close()
