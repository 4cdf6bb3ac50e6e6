"""``inference_process = true``: the node's workers run in a child process with their own
model, score what the receiver queued (woken across the process boundary), and stop with
the node; a child that dies is restarted. Real associations, the demo model, SQLite."""

from __future__ import annotations

import os

import pytest
from dicom_client import send
from helpers import study, wait_for
from sqlalchemy import select

from ichnode.db.models import Instance, InstanceStatus
from ichnode.node.statuses import SUCCESS
from ichnode.node.supervise import ChildHealth

pytestmark = [pytest.mark.parametrize("db_url", ["sqlite"], indirect=True), pytest.mark.slow]


def _statuses(node) -> list[InstanceStatus]:  # noqa: ANN001
    with node.sessions() as session:
        return list(session.scalars(select(Instance.status)))


def test_a_child_process_scores_what_the_receiver_queued_and_stops_with_the_node(node_factory):
    node = node_factory(inference_process=True, workers=1)
    child = node.inference.process
    assert child.pid != os.getpid() and child.is_alive()
    workers = [t for t in node.threads if t.name.startswith("worker-")]
    # No worker thread here: the health stand-in follows the child.
    assert [type(t) for t in workers] == [ChildHealth] and workers[0].is_alive()
    assert send(node.settings.port, study(3, size=32)) == [SUCCESS] * 3
    assert wait_for(lambda: _statuses(node) == [InstanceStatus.DONE] * 3, timeout=120)
    node.stop()
    assert not child.is_alive() and child.exitcode == 0
    assert not workers[0].is_alive()


def test_the_child_runs_below_the_receivers_cpu_priority(node_factory):
    node = node_factory(inference_process=True, workers=1, inference_nice=7)
    child = node.inference.process
    own = os.getpriority(os.PRIO_PROCESS, 0)
    assert wait_for(lambda: os.getpriority(os.PRIO_PROCESS, child.pid) == min(own + 7, 19))
    node.stop()


def test_a_child_process_killed_while_idle_is_restarted_and_the_receiver_never_waits(
    node_factory,
):
    node = node_factory(inference_process=True, workers=1)
    assert send(node.settings.port, study(1, size=32)) == [SUCCESS]
    assert wait_for(lambda: _statuses(node) == [InstanceStatus.DONE], timeout=120)
    first = node.inference.process  # idle now: its workers sleep on the wake-up
    first.kill()
    first.join()
    # Waking a killed sleeper must not block the C-STORE (a multiprocessing Event would).
    assert send(node.settings.port, study(2, size=32)) == [SUCCESS] * 2
    wait_for(lambda: node.inference.process is not first, timeout=30)
    assert wait_for(lambda: _statuses(node) == [InstanceStatus.DONE] * 3, timeout=120)


def test_the_node_is_ready_once_the_child_has_loaded_its_model(node_factory):
    node = node_factory(inference_process=True, workers=1)
    # start() returned: the child has loaded and run its model (a second wait returns at once).
    assert node.inference.wait_loaded(timeout=0)
    assert node.inference.process.is_alive()
    node.stop()


def test_a_child_that_dies_before_loading_its_model_does_not_hold_the_node_up(tmp_path, db_url):
    from ichnode.config import Settings
    from ichnode.node.inference_process import InferenceProcess

    # A model file the child cannot load (the node's own process never tries it here).
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a checkpoint")
    child = InferenceProcess(Settings(model=bad, db_url=db_url, store=tmp_path / "store"), ["w"])
    child.start()
    try:
        assert not child.wait_loaded(timeout=60)
    finally:
        child.stop()
