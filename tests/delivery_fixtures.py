"""Helpers of the delivery tests: a phantom study with a bleed, destinations, the outbox rows.

Assertions never depend on which findings the shipped model produces.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pydicom
from orthanc import STORESCP_AE
from sqlalchemy import select

from ichnode.db.models import DeliveryStatus, OutboxEntry, ReportObject, StudyResult
from phantoms.synth import synth_study

#: Objects the tests' destinations ask for.
ALL_OBJECTS = ["sr", "summary", "kos"]
SR_MODALITY = "SR"
KOS_MODALITY = "KO"


def bleed_study(seed: int = 1, n_slices: int = 8, size: int = 256) -> list[pydicom.Dataset]:
    slices = synth_study(seed, n_slices=n_slices, size=size, subtypes=("subdural",))
    return [s.dataset for s in slices]


def destination(port: int, objects: list[str] | None = None, name: str = "scp") -> dict:
    return {
        "name": name,
        "ae_title": STORESCP_AE,
        "host": "127.0.0.1",
        "port": port,
        "objects": objects or ALL_OBJECTS,
    }


@dataclass(frozen=True)
class Row:
    """An outbox row with the report object it sends (what the tests look at)."""

    id: int
    study_result_id: int
    destination: str
    ae_title: str
    host: str
    port: int
    kind: str
    sop_instance_uid: str
    path: str
    status: DeliveryStatus
    attempts: int
    last_error: str | None
    sent_at: datetime | None


def rows(node, version: int | None = None) -> list[Row]:  # noqa: ANN001
    with node.sessions() as session:
        query = (
            select(OutboxEntry, ReportObject)
            .join(ReportObject)
            .join(StudyResult)
            .order_by(OutboxEntry.id)
        )
        if version is not None:
            query = query.where(StudyResult.version == version)
        return [
            Row(e.id, o.study_result_id, e.destination, e.ae_title, e.host, e.port, str(o.kind),
                o.sop_instance_uid, o.path, e.status, e.attempts, e.last_error, e.sent_at)
            for e, o in session.execute(query)
        ]  # fmt: skip


def all_sent(node, version: int | None = None, count: int | None = None):  # noqa: ANN001, ANN201
    """The rows (of ``version``) once there are (``count`` of) them and all are SENT."""
    found = rows(node, version)
    if not found or (count is not None and len(found) != count):
        return None
    return found if all(r.status == DeliveryStatus.SENT for r in found) else None


def latest_result(node) -> StudyResult | None:  # noqa: ANN001
    with node.sessions() as session:
        return session.scalar(select(StudyResult).order_by(StudyResult.id.desc()).limit(1))


def dciodvfy_errors(path: Path) -> list[str]:
    done = subprocess.run(["/usr/bin/dciodvfy", str(path)], capture_output=True, text=True)
    return [line for line in (done.stdout + done.stderr).splitlines() if "Error" in line]
