"""Scale-out: three `ichnode worker` processes on one PostgreSQL queue and a shared store."""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import timedelta
from io import BytesIO

import pytest
from helpers import study
from sqlalchemy import func, select, update

from ichnode.db import make_engine, make_sessionmaker, upgrade, utcnow
from ichnode.db.ingest import Received, record_instance
from ichnode.db.models import Instance, InstanceStatus, Prediction
from ichnode.store import Store

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

N = 96
DEAD = "deadhost:worker:1"


def _fill(url: str, store: Store) -> None:
    sessions = make_sessionmaker(make_engine(url))
    with sessions.begin() as session:
        for ds in study(N, size=64):
            rel = store.relative_path(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
            buf = BytesIO()
            ds.save_as(buf, enforce_file_format=True)
            received = Received.from_dataset(
                ds,
                calling_ae="T",
                transfer_syntax=ds.file_meta.TransferSyntaxUID,
                z=float(ds.ImagePositionPatient[2]),
                received_at=utcnow(),
            )
            received.path, received.size_bytes = rel, store.write(rel, buf.getvalue())
            record_instance(session, received)
        # A worker that died holding a batch: its lease has expired.
        dead_ids = session.scalars(select(Instance.id).order_by(Instance.id).limit(8)).all()
        session.execute(
            update(Instance)
            .where(Instance.id.in_(dead_ids))
            .values(
                status=InstanceStatus.CLAIMED,
                claimed_by=DEAD,
                claim_token="x" * 32,
                lease_expires_at=utcnow() - timedelta(seconds=5),
                attempts=1,
            )
        )
    sessions.kw["bind"].dispose()


def test_three_worker_processes_score_every_instance_exactly_once(postgres_url, tmp_path):
    upgrade(postgres_url)
    store = Store(tmp_path / "store")
    _fill(postgres_url, store)
    cmd = [
        sys.executable,
        "-m",
        "ichnode",
        "--log-level",
        "WARNING",
        "worker",
        "--db-url",
        postgres_url,
        "--store",
        str(store.root),
        "--batch-size",
        "2",
        "--torch-threads",
        "1",
        "--exit-when-empty",
    ]
    procs = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [o[1][-2000:] for o in outputs]

    engine = make_engine(postgres_url)
    with make_sessionmaker(engine)() as session:
        statuses = dict(
            session.execute(select(Instance.status, func.count()).group_by(Instance.status)).all()
        )
        per_instance = session.execute(
            select(Prediction.instance_id, func.count()).group_by(Prediction.instance_id)
        ).all()
        holders = dict(
            session.execute(
                select(Instance.claimed_by, func.count()).group_by(Instance.claimed_by)
            ).all()
        )
    engine.dispose()
    assert statuses == {InstanceStatus.DONE: N}
    assert len(per_instance) == N and {count for _, count in per_instance} == {1}
    # The dead worker's expired leases moved to live workers. (How the work splits between the
    # three depends on how fast each process loads torch and the model, so it is not asserted;
    # benchmarks/scaleout.py measures the speed-up.)
    assert DEAD not in holders
    assert all(h.split(":")[1] == "worker" for h in holders)


def test_two_serve_processes_and_a_worker_result_a_study_split_over_both_once(
    postgres_url, tmp_path
):
    """Two `ichnode serve` processes on one PostgreSQL database and one store (as two hosts
    behind a load balancer would be) and an `ichnode worker`: half a study arrives at each
    (DCMTK storescu to one, pynetdicom to the other); the study gets exactly one result that
    counts every slice, though both monitors watch it."""
    from dicom_client import send
    from helpers import free_port, run_dcmtk, wait_for, write_all
    from test_node_process import ServeProcess

    from ichnode.db.models import StudyResult

    store = tmp_path / "store"
    common = ("--db-url", postgres_url, "--store", str(store), "--stable-seconds", "2")
    ports = [free_port(), free_port()]
    a = ServeProcess(tmp_path, *common, "--port", str(ports[0]), "--workers", "1")
    b = ServeProcess(tmp_path, *common, "--port", str(ports[1]), "--workers", "0")
    worker = subprocess.Popen(
        [sys.executable, "-m", "ichnode", "worker", "--db-url", postgres_url,
         "--store", str(store), "--torch-threads", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        slices = study(12, size=64)
        files = write_all(slices[:6], tmp_path / "first")
        done = run_dcmtk(
            "storescu", "-aec", "ICHNODE", "127.0.0.1", str(ports[0]), *map(str, files)
        )
        assert done.returncode == 0, done.stderr
        assert send(ports[1], slices[6:]) == [0x0000] * 6

        engine = make_engine(postgres_url)
        sessions = make_sessionmaker(engine)

        def results() -> list[StudyResult]:
            with sessions() as session:
                return session.scalars(select(StudyResult)).all()

        [first] = wait_for(results, timeout=120)
        time.sleep(4)  # both monitors have had many more passes at it: still the one result
        [again] = results()
        assert again.id == first.id and again.version == 1
        assert again.n_instances == again.n_scored == 12
        with sessions() as session:
            statuses = session.scalars(select(Instance.status)).all()
        engine.dispose()
        assert statuses == [InstanceStatus.DONE] * 12
    finally:
        worker.terminate()
        worker.wait(timeout=60)
        assert a.stop() == 0 and b.stop() == 0
