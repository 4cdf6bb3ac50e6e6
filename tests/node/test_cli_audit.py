"""`ichnode audit`: associations and deliveries from the database, as a real subprocess."""

from __future__ import annotations

import subprocess
import sys

from dicom_client import send
from helpers import study, wait_for
from sqlalchemy import func, select

from ichnode.db.models import Association


def test_audit_lists_the_association_that_sent_a_study(scp_factory, db_url):
    node = scp_factory()
    assert send(node.settings.port, study(3, size=32), calling_ae="AUDITSCU") == [0, 0, 0]

    def closed() -> int:
        with node.sessions() as s:
            return s.scalar(
                select(func.count())
                .select_from(Association)
                .where(Association.ended_at.is_not(None))
            )

    wait_for(closed)
    done = subprocess.run(
        [sys.executable, "-m", "ichnode", "audit", "--db-url", db_url],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    line = next(x for x in done.stdout.splitlines() if "AUDITSCU" in x)
    assert "ICHNODE" in line and "127.0.0.1" in line and " 3 " in f" {line} "
    assert "Deliveries" in done.stdout


def test_store_sweeps_temp_files_left_by_a_killed_node(tmp_path):
    from ichnode.store import Store

    store = Store(tmp_path)
    rel = store.relative_path("1.2.3", "1.2.4", "1.2.5")
    store.write(rel, b"complete")
    leftover = store.path(rel).with_name(".1.2.6.dcm.abc.tmp")
    leftover.write_bytes(b"half")
    assert store.sweep_temp() == 1
    assert not leftover.exists() and store.path(rel).read_bytes() == b"complete"
