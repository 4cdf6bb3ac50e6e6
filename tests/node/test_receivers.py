"""A node receiving in two processes on one listening socket (``receivers``): parallel
associations from pynetdicom and DCMTK are all stored and give one study result; associations
held open are spread evenly over the processes; the receiver
process alone stores and wakes the inference process (or the worker threads); a receiver
killed with SIGKILL is restarted and receives again. Real associations over loopback, the demo
model, SQLite."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable

import pytest
from dicom_client import echo, send
from helpers import run_dcmtk, study, wait_for, write_all
from pynetdicom import AE
from pynetdicom.sop_class import Verification
from sqlalchemy import func, select

from ichnode.db.models import Instance, InstanceStatus, Study, StudyResult
from ichnode.node.server import Node
from ichnode.node.statuses import SUCCESS

pytestmark = [
    pytest.mark.parametrize("db_url", ["sqlite"], indirect=True),
    pytest.mark.slow,
]


@pytest.fixture
def two_receivers(node_factory: Callable[..., Node]) -> Callable[..., Node]:
    """Start an in-process node on a free port that receives in itself and one child, its
    workers in serve's inference process unless told otherwise."""

    def start(**overrides: object) -> Node:
        return node_factory(receiving=2, **({"inference_process": True} | overrides))

    return start


def _count(node: Node, *where: object) -> int:
    with node.sessions() as session:
        return session.scalar(select(func.count()).select_from(Instance).where(*where)) or 0


def _answers_echo(port: int) -> bool:
    try:
        return echo(port) == SUCCESS
    except AssertionError:  # nothing listening yet: the association was not established
        return False


def test_parallel_associations_to_two_receivers_are_all_stored_with_one_result(
    two_receivers, tmp_path
):
    node = two_receivers()
    port = node.settings.port
    slices = study(20, size=32)
    parts = [slices[i::4] for i in range(4)]  # 4 pynetdicom associations, 5 slices each
    answers: list[list[int]] = []
    threads = [threading.Thread(target=lambda p=p: answers.append(send(port, p))) for p in parts]
    more = study(6, size=32, StudyInstanceUID=slices[0].StudyInstanceUID)
    files = write_all(more, tmp_path / "dcmtk")
    for thread in threads:
        thread.start()
    done = run_dcmtk("storescu", "-aec", "ICHNODE", "127.0.0.1", str(port), *map(str, files))
    for thread in threads:
        thread.join(60)
    assert done.returncode == 0, done.stderr
    assert sorted(map(len, answers)) == [5] * 4 and all(a == [SUCCESS] * 5 for a in answers)
    assert wait_for(lambda: _count(node, Instance.status == InstanceStatus.DONE) == 26, timeout=120)

    def results() -> int:
        with node.sessions() as session:
            return (
                session.scalar(
                    select(func.count())
                    .select_from(StudyResult)
                    .join(Study, StudyResult.study_id == Study.id)
                    .where(Study.study_instance_uid == str(slices[0].StudyInstanceUID))
                )
                or 0
            )

    assert wait_for(lambda: results() >= 1, timeout=60)
    assert results() == 1
    with node.sessions() as session:
        paths = session.scalars(select(Instance.path)).all()
    assert len(paths) == 26 and all((node.store.root / p).is_file() for p in paths)


def test_associations_held_open_are_spread_evenly_over_the_receivers(two_receivers):
    node = two_receivers()
    loads = node.scp.server.listening.loads  # connections each process holds (shared memory)
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(Verification)
    held = []
    try:
        for opened in range(1, 5):  # one after another, each established before the next
            assoc = ae.associate("127.0.0.1", node.settings.port, ae_title="ICHNODE")
            assert assoc.is_established
            held.append(assoc)
            assert wait_for(lambda opened=opened: sum(loads) == opened)
            if opened == 1:  # the receiver first: the node's process runs the web and the rest
                assert list(loads) == [0, 1]
        # Left to chance (SO_REUSEPORT's hash of the ports) 2 + 2 is 6 outcomes of 16.
        assert sorted(loads) == [2, 2]
        assert all(int(a.send_c_echo().Status) == SUCCESS for a in held)
    finally:
        for assoc in held:
            assoc.release()
    assert wait_for(lambda: sum(loads) == 0)  # each process counts its closed associations


def test_the_receiver_process_alone_stores_and_wakes_the_inference_process(two_receivers):
    node = two_receivers()
    node.scp.shutdown()  # only the child listens now
    assert send(node.settings.port, study(3, size=32)) == [SUCCESS] * 3
    assert wait_for(lambda: _count(node, Instance.status == InstanceStatus.DONE) == 3, timeout=120)


def test_a_receiver_killed_with_sigkill_is_restarted_and_receives(two_receivers):
    # What it had in flight (a temp file in its folder of writes in progress) is removed
    # before it is restarted, not at the node's next start.
    from ichnode.store import INCOMING, incoming_name

    node = two_receivers()
    node.scp.shutdown()
    child = node.receivers.children[0]
    first = child.process
    in_flight = node.store.root / INCOMING / incoming_name(first.pid)
    in_flight.mkdir(parents=True, exist_ok=True)
    (in_flight / "1.2.3.dcm.abc.tmp").write_bytes(b"half")
    os.kill(first.pid, signal.SIGKILL)
    assert wait_for(lambda: child.process is not first, timeout=30)
    assert not in_flight.exists()
    assert wait_for(lambda: _answers_echo(node.settings.port), timeout=60, interval=0.2)
    assert child.restarts == 1
    assert send(node.settings.port, study(2, size=32)) == [SUCCESS] * 2
    assert _count(node) == 2


def test_a_receiver_process_feeds_worker_threads_of_the_node(two_receivers):
    node = two_receivers(inference_process=False)
    node.scp.shutdown()
    assert node.inference is None and [t for t in node.threads if t.name == "receiver-wake"]
    assert send(node.settings.port, study(2, size=32)) == [SUCCESS] * 2
    assert wait_for(lambda: _count(node, Instance.status == InstanceStatus.DONE) == 2, timeout=120)
