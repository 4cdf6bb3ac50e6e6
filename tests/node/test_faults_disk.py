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
