"""A full disk: a 2 MiB tmpfs mounted as the store. C-STOREs that do not fit answer 0xA700,
leave no half-written or temp file and no row; when space returns, the node stores again."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from dicom_client import echo, send
from helpers import study
from sqlalchemy import select

from ichnode.db.models import Instance
from ichnode.node.scp import OUT_OF_RESOURCES, SUCCESS

TMPFS_SIZE = "2m"


@pytest.fixture
def small_disk(tmp_path: Path):  # noqa: ANN201
    """A 2 MiB tmpfs (the tests run as root); unmounted afterwards."""
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE}", "tmpfs", str(mount)], check=True
    )
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_full_disk_answers_a700_leaves_nothing_and_recovers(scp_factory, small_disk):
    node = scp_factory(store=small_disk / "store")
    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * (2 * 1024 * 1024 - 150 * 1024))  # leave ~150 KiB free
    slices = study(4, size=256)  # 128 KiB of pixels each
    statuses = send(node.settings.port, slices)
    assert OUT_OF_RESOURCES in statuses
    with node.sessions() as session:
        rows = {i.sop_instance_uid: i for i in session.scalars(select(Instance))}
    files = [p for p in node.store.root.rglob("*") if p.is_file()]
    assert not [p for p in files if p.name.endswith(".tmp")]  # no temp file left
    for ds, status in zip(slices, statuses, strict=True):
        stored = [p for p in files if p.name == f"{ds.SOPInstanceUID}.dcm"]
        if status == SUCCESS:  # a Success has its row and its complete file
            assert (
                ds.SOPInstanceUID in rows
                and stored[0].stat().st_size == rows[ds.SOPInstanceUID].size_bytes
            )
        else:  # a failure has neither
            assert ds.SOPInstanceUID not in rows and not stored
    filler.unlink()
    failed = [ds for ds, s in zip(slices, statuses, strict=True) if s != SUCCESS]
    assert send(node.settings.port, failed) == [SUCCESS] * len(failed)
    assert echo(node.settings.port) == SUCCESS


def test_a_stow_request_the_disk_cannot_hold_answers_503_and_leaves_nothing(
    tmp_path, session_factory, small_disk, caplog
):
    """A STOW-RS body waits in a scratch file on the store's disk: a full disk answers 503
    with one clear reason, leaves no scratch file, and the same request succeeds once there
    is room."""
    from test_stow import REFERENCED_SOP_SEQUENCE, multipart, part10, stow_client

    body, content_type = multipart([part10(ds) for ds in study(4, size=256)])  # ~530 KB
    headers = {"Content-Type": content_type}
    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * (2 * 1024 * 1024 - 150 * 1024))  # leave ~150 KiB free
    with stow_client(small_disk, session_factory, max_stow_bytes=8 << 20) as client:
        answer = client.post("/dicom-web/studies", content=body, headers=headers)
        assert answer.status_code == 503
        assert answer.json()["detail"] == (
            "cannot take the request: cannot write to the store: No space left on device"
        )
        refused = [r for r in caplog.records if "STOW-RS request refused" in r.getMessage()]
        assert len(refused) == 1 and refused[0].exc_info is None
        assert [p for p in (small_disk / "store").rglob("*") if p.is_file()] == []
        filler.unlink()
        answer = client.post("/dicom-web/studies", content=body, headers=headers)
        assert answer.status_code == 200
        assert len(answer.json()[REFERENCED_SOP_SEQUENCE]["Value"]) == 4


def test_a_stow_request_that_would_leave_less_than_min_free_bytes_answers_503(
    session_factory, small_disk
):
    from test_stow import multipart, part10, stow_client

    body, content_type = multipart([part10(ds) for ds in study(4, size=256)])  # ~530 KB
    with stow_client(
        small_disk, session_factory, max_stow_bytes=8 << 20, min_free_bytes=1600 << 10
    ) as client:
        answer = client.post(
            "/dicom-web/studies", content=body, headers={"Content-Type": content_type}
        )
    assert answer.status_code == 503
    assert answer.json()["detail"] == (
        "cannot take the request: free disk space below the configured minimum"
    )
    assert [p for p in (small_disk / "store").rglob("*") if p.is_file()] == []
