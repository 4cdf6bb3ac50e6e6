"""SharedListener's connection counts (the loads receiver processes share to spread
associations) return to zero however a connection ends. Real associations over loopback to a
GuardedServer accepting on a SharedListener, in this process."""

from __future__ import annotations

import multiprocessing
import threading

import pytest
from helpers import free_port, wait_for
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification

from ichnode.node.transport import GuardedServer, SharedListener, start_server


@pytest.fixture
def listening_server():
    port = free_port()
    listener = SharedListener.bind("127.0.0.1", port, 1, multiprocessing.get_context("spawn"))
    ae = AE(ae_title="ICHNODE")
    ae.add_supported_context(Verification)
    server = ae.make_server(
        ("127.0.0.1", port), server_class=GuardedServer, listening=listener.for_process(0)
    )
    start_server(server)
    try:
        yield port, listener.loads
    finally:
        server.shutdown()
        listener.close()


def _associate(port: int) -> Association:
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.network_timeout = 5
    return ae.associate("127.0.0.1", port, ae_title="ICHNODE")


def test_an_association_is_counted_while_open_and_uncounted_when_released(listening_server):
    port, loads = listening_server
    assoc = _associate(port)
    assert assoc.is_established
    assert wait_for(lambda: loads[0] == 1)
    assoc.release()
    assert wait_for(lambda: loads[0] == 0)


def test_an_association_whose_thread_never_starts_is_uncounted(
    listening_server, monkeypatch, caplog, capfd
):
    """The server could not start the association's thread (e.g. no thread left): nothing
    will run it, so the connection's thread itself takes its count back."""
    port, loads = listening_server
    real_start = Association.start
    failed = threading.Event()

    def start_fails_once(self: Association) -> None:
        if self.mode == "acceptor" and not failed.is_set():
            failed.set()
            raise RuntimeError("can't start new thread")
        real_start(self)

    monkeypatch.setattr(Association, "start", start_fails_once)
    refused = _associate(port)
    assert not refused.is_established and failed.is_set()
    assert wait_for(lambda: loads[0] == 0)
    # One log line, no traceback on stderr (socketserver's handle_error prints one).
    failures = [r for r in caplog.records if "failed: RuntimeError" in r.getMessage()]
    assert len(failures) == 1 and failures[0].exc_info is None
    assert "Traceback" not in capfd.readouterr().err
    assoc = _associate(port)  # the server still serves, and counts
    assert assoc.is_established and wait_for(lambda: loads[0] == 1)
    assoc.release()
    assert wait_for(lambda: loads[0] == 0)


def test_no_process_defers_to_the_slot_of_a_receiver_that_died():
    """A dead receiver's slot (vacated by the node until its restart adopts it) takes no
    connection, so a busier process does not wait for it; the restart counts from zero."""
    listener = SharedListener.bind(
        "127.0.0.1", free_port(), 2, multiprocessing.get_context("spawn")
    )
    node, receiver = listener.for_process(0), listener.for_process(1)
    try:
        receiver.publish(0)
        node.publish(1)
        assert node.busier()  # a live receiver holding fewer takes the next connection
        receiver.vacate()  # it died holding none
        assert not node.busier()
        receiver.publish(3)
        receiver.vacate()  # it died holding three
        assert not node.busier()
        receiver.adopt()  # restarted
        assert list(listener.loads) == [1, 0] and node.busier()
    finally:
        for each in (node, receiver, listener):
            each.close()
