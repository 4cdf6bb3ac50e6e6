"""`ichnode audit`: associations and deliveries from the database, as a real subprocess."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
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
    """Writes in progress live in a folder per process; a starting node removes those of its
    host's processes that are gone, and leaves a running process's alone (a second node on
    the same store), as a restarted receiver's is removed by pid."""
    from ichnode.store import INCOMING, Store, StoreError, incoming_name

    store = Store(tmp_path)
    rel = store.relative_path("1.2.3", "1.2.4", "1.2.5")
    store.write(rel, b"complete")
    mine = tmp_path / INCOMING / incoming_name(os.getpid())
    assert mine.is_dir() and not any(mine.iterdir())  # the write left nothing behind
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        folders = {
            pid: tmp_path / INCOMING / incoming_name(pid)
            for pid in (int(gone.stdout), alive.pid, os.getpid())
        }
        for pid, folder in folders.items():
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"1.2.6.dcm.{pid}.tmp").write_bytes(b"half")
        # Another host whose name starts with ours and a hyphen ("<ours>-b"), pid 1.
        other_host = tmp_path / INCOMING / f"{incoming_name(0)[:-1]}b-1"
        other_host.mkdir()
        (other_host / "1.2.7.dcm.x.tmp").write_bytes(b"in flight elsewhere")
        assert store.sweep_temp() == 1  # the dead process's
        assert not folders[int(gone.stdout)].exists()
        assert (folders[alive.pid] / f"1.2.6.dcm.{alive.pid}.tmp").exists()
        assert (folders[os.getpid()] / f"1.2.6.dcm.{os.getpid()}.tmp").exists()
        assert (other_host / "1.2.7.dcm.x.tmp").exists()
        assert store.sweep_process(alive.pid) == 1 and not folders[alive.pid].exists()
    finally:
        alive.kill()
        alive.wait()
    assert store.path(rel).read_bytes() == b"complete"
    # A folder removed under a running process costs it one refused write, not every later one.
    assert store.sweep_process(os.getpid()) == 1
    with pytest.raises(StoreError):
        store.write(store.relative_path("1.2.3", "1.2.4", "1.2.8"), b"refused")
    store.write(store.relative_path("1.2.3", "1.2.4", "1.2.8"), b"again")
    assert store.path(store.relative_path("1.2.3", "1.2.4", "1.2.8")).read_bytes() == b"again"
