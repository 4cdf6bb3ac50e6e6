"""Report versions claimed under a lease and a token, and report objects recorded
(ichnode.db.reports), on real SQLite files and a real PostgreSQL server."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from db_fixtures import add_instances
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from ichnode.db import reports
from ichnode.db.models import (
    Instance,
    OutboxEntry,
    ReportKind,
    ReportObject,
    ReportStatus,
    StudyResult,
    utcnow,
)

#: The claims, locks and SQL here behave differently on the two databases.
pytestmark = pytest.mark.every_backend

LEASE_S = 60.0


def pending_versions(session_factory: sessionmaker[Session], n: int) -> list[int]:
    """One study with result versions 1..n, all pending; returns their ids."""
    with session_factory.begin() as session:
        [instance_id] = add_instances(session, 1)
        study = session.get(Instance, instance_id).study
        study.result_version = n
        results = [
            StudyResult(study_id=study.id, version=v, model_id="m", flagged=False,
                        n_instances=1, n_scored=1, n_failed=0, n_skipped=0)
            for v in range(1, n + 1)
        ]  # fmt: skip
        session.add_all(results)
        session.flush()
        return [r.id for r in results]


def sr(result_id: int, uid: str = "1.2.3.4") -> reports.StoredObject:
    return reports.StoredObject(ReportKind.SR, "1.2.840.10008.5.1.4.1.1.88.33", "1.2.3", uid,
                                f"1.2/1.2.3/{uid}.dcm")  # fmt: skip


PACS = reports.Address("pacs", "PACS", "127.0.0.1", 104, (ReportKind.SR, ReportKind.SUMMARY))


def test_a_claimed_version_is_not_claimed_again_until_its_lease_ends(session_factory):
    [result_id] = pending_versions(session_factory, 1)
    now = utcnow()
    with session_factory.begin() as session:
        [first] = reports.claim(session, LEASE_S, now=now)
        assert reports.claim(session, LEASE_S, now=now + timedelta(seconds=59)) == []
        [again] = reports.claim(session, LEASE_S, now=now + timedelta(seconds=61))
    assert first.result_id == again.result_id == result_id
    assert first.claim_token != again.claim_token


def test_a_reporter_whose_claim_lapsed_cannot_record_its_objects(session_factory):
    [result_id] = pending_versions(session_factory, 1)
    now = utcnow()
    with session_factory.begin() as session:
        [slow] = reports.claim(session, LEASE_S, now=now)
    with session_factory.begin() as session:
        [fast] = reports.claim(session, LEASE_S, now=now + timedelta(seconds=LEASE_S + 1))
    with session_factory.begin() as session:
        assert reports.record(session, slow, [sr(result_id)], [PACS]) is None
        session.rollback()  # what the reporter does: nothing of the stale build is kept
    with session_factory.begin() as session:
        [entry] = reports.record(session, fast, [sr(result_id, "1.2.3.5")], [PACS])
    with session_factory() as session:
        result = session.get(StudyResult, result_id)
        assert (result.report_status, result.report_claim_token) == (ReportStatus.DONE, None)
        [obj] = session.scalars(select(ReportObject)).all()
        assert obj.sop_instance_uid == "1.2.3.5" and entry.report_object_id == obj.id


def test_record_queues_each_wanted_object_for_each_address_in_kind_order(session_factory):
    [result_id] = pending_versions(session_factory, 1)
    summary = reports.StoredObject(ReportKind.SUMMARY, "1.2.840.10008.5.1.4.1.1.7", "1.2.4",
                                   "1.2.4.1", "1.2/1.2.4/1.2.4.1.dcm")  # fmt: skip
    only_sr = reports.Address("ris", "RIS", "10.0.0.2", 104, (ReportKind.SR,))
    with session_factory.begin() as session:
        [claimed] = reports.claim(session, LEASE_S)
        reports.record(session, claimed, [summary, sr(result_id)], [PACS, only_sr])
    with session_factory() as session:
        queued = session.execute(
            select(OutboxEntry.destination, ReportObject.kind)
            .join(ReportObject)
            .order_by(OutboxEntry.id)
        ).all()
        later = reports.previous_objects(session, session.get(StudyResult, result_id).study_id, 2)
    assert [tuple(q) for q in queued] == [
        ("pacs", ReportKind.SR), ("pacs", ReportKind.SUMMARY), ("ris", ReportKind.SR),
    ]  # fmt: skip
    assert {k: o.sop_instance_uid for k, o in later.items()} == {
        ReportKind.SR: "1.2.3.4", ReportKind.SUMMARY: "1.2.4.1",
    }  # fmt: skip


def test_a_version_handed_back_after_a_failure_waits_for_its_retry_time(session_factory):
    [result_id] = pending_versions(session_factory, 1)
    now = utcnow()
    with session_factory.begin() as session:
        [claimed] = reports.claim(session, LEASE_S, now=now)
        assert reports.retry_at(session, claimed, now + timedelta(seconds=5))
        assert reports.claim(session, LEASE_S, now=now + timedelta(seconds=4)) == []
        assert [c.result_id for c in reports.claim(session, LEASE_S, now=now + timedelta(
            seconds=5))] == [result_id]  # fmt: skip


def test_concurrent_reporters_claim_each_version_once(session_factory):
    ids = pending_versions(session_factory, 12)
    taken: list[int] = []
    barrier = threading.Barrier(3)

    def reporter() -> None:
        barrier.wait(30)
        while True:
            with session_factory.begin() as session:
                claimed = reports.claim(session, LEASE_S, limit=2)
            if not claimed:
                return
            taken.extend(c.result_id for c in claimed)

    threads = [threading.Thread(target=reporter) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(taken) == ids
