"""SIGKILL of ``ichnode serve`` under load from four associations: after a restart every
acknowledged instance has its file and row and is scored exactly once; the others can be sent
again."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from dicom_client import send
from helpers import free_port, study, wait_for
from pynetdicom import AE
from sqlalchemy import create_engine, func, select
from sqlalchemy.orm import Session

from ichnode.db.models import Instance, InstanceStatus, Prediction
from ichnode.node.scp import SUCCESS
from ichnode.node.scu import hold_responses_for_the_sender

pytestmark = pytest.mark.slow

SENDERS = 4
SLICES = 15
KILL_AFTER_ACKS = 20


def _serve(cwd: Path, config: Path, log: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "ichnode", "serve", "--config", str(config)],
        cwd=cwd,
        stdout=log.open("a"),
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )

    def ready() -> bool:
        assert proc.poll() is None, log.read_text()
        return log.read_text().count("ichnode ready:") > 0

    wait_for(ready, timeout=90, interval=0.1)
    return proc


def test_sigkill_under_load_keeps_every_acknowledged_instance(tmp_path, model_path):
    port = free_port()
    db = tmp_path / "ichnode.db"
    config = tmp_path / "ichnode.toml"
    config.write_text(
        f'port = {port}\ndb_url = "sqlite:///{db}"\nstore = "{tmp_path / "store"}"\n'
        f'model = "{model_path}"\ndevice = "cpu"\nmin_free_bytes = 0\nstable_seconds = 1.0\n'
        "workers = 1\n[http]\nenabled = false\n"
    )
    log = tmp_path / "serve.log"
    proc = _serve(tmp_path, config, log)
    studies = [study(SLICES, size=128) for _ in range(SENDERS)]
    acked: set[str] = set()
    lock = threading.Lock()

    def sender(slices: list) -> None:  # noqa: ANN001
        ae = AE(ae_title="LOADSCU")
        ae.add_requested_context(slices[0].SOPClassUID, slices[0].file_meta.TransferSyntaxUID)
        assoc = hold_responses_for_the_sender(ae.associate("127.0.0.1", port, ae_title="ICHNODE"))
        if not assoc.is_established:
            return
        for ds in slices:
            try:
                answer = assoc.send_c_store(ds)
            except Exception:  # noqa: BLE001 - the node died under us
                return
            if not assoc.is_established or "Status" not in answer:
                return
            if answer.Status == SUCCESS:
                with lock:
                    acked.add(ds.SOPInstanceUID)
        assoc.release()

    threads = [threading.Thread(target=sender, args=(s,)) for s in studies]
    for t in threads:
        t.start()
    wait_for(lambda: len(acked) >= KILL_AFTER_ACKS, timeout=60, interval=0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    for t in threads:
        t.join(60)
    with lock:
        acknowledged = set(acked)
    everything = {ds.SOPInstanceUID for s in studies for ds in s}
    assert KILL_AFTER_ACKS <= len(acknowledged) < len(everything)

    proc = _serve(tmp_path, config, log)
    engine = create_engine(f"sqlite:///{db}")
    try:

        def all_scored() -> bool:
            with Session(engine) as session:
                done = session.scalars(
                    select(Instance.sop_instance_uid).where(Instance.status == InstanceStatus.DONE)
                ).all()
            return acknowledged <= set(done)

        wait_for(all_scored, timeout=120, interval=0.2)
        with Session(engine) as session:
            rows = session.scalars(select(Instance)).all()
            per_instance = dict(
                session.execute(
                    select(Prediction.instance_id, func.count()).group_by(Prediction.instance_id)
                ).all()
            )
        by_uid = {r.sop_instance_uid: r for r in rows}
        for uid in acknowledged:
            row = by_uid[uid]
            path = tmp_path / "store" / row.path
            assert path.is_file() and path.stat().st_size == row.size_bytes
            assert per_instance[row.id] == 1  # scored exactly once
        # Unacknowledged instances can be sent again (Success, duplicate or not).
        rest = [ds for s in studies for ds in s if ds.SOPInstanceUID not in acknowledged]
        assert send(port, rest, calling_ae="LOADSCU") == [SUCCESS] * len(rest)
    finally:
        engine.dispose()
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
