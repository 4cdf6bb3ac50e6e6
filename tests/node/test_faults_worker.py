"""A batch whose inference raises (a GPU out of memory, injected into the real predictor) does
not end the worker: the batch is scored on a later claim, and the node carries on."""

from __future__ import annotations

import logging

from dicom_client import send
from helpers import study, wait_for
from sqlalchemy import select

from ichnode.db.models import Instance, InstanceStatus
from ichnode.node.scp import SUCCESS


def test_a_failed_batch_does_not_end_the_worker(node_factory, caplog, monkeypatch):
    caplog.set_level(logging.ERROR, logger="ichnode.node.worker")
    # The failure is injected into the predictor of this process: the workers run as threads
    # here (inference_process = false); the child process runs the same Worker loop.
    node = node_factory(lease_seconds=1.0, inference_process=False)
    real = node.predictor.embed_scores
    failures = []

    def out_of_memory_once(batch, checkpoint=None):  # noqa: ANN001, ANN202
        if not failures:
            failures.append(len(batch))
            raise RuntimeError("CUDA out of memory (injected by the test)")
        return real(batch, checkpoint)

    monkeypatch.setattr(node.predictor, "embed_scores", out_of_memory_once)
    assert send(node.settings.port, study(3, size=32)) == [SUCCESS] * 3

    def statuses() -> list[InstanceStatus]:
        with node.sessions() as session:
            return list(session.scalars(select(Instance.status)))

    assert wait_for(lambda: statuses() == [InstanceStatus.DONE] * 3, timeout=60)
    assert failures and "batch failed, retrying later" in caplog.text
    workers = [t for t in node.threads if t.name.startswith("worker-")]
    assert workers and all(t.is_alive() for t in workers)
    with node.sessions() as session:
        assert max(session.scalars(select(Instance.attempts))) == 2  # failed claim, then scored
