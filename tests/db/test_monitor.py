"""The study monitor's loop: it results a study when it becomes stable, not at its next poll.

Real databases (SQLite and PostgreSQL through ``session_factory``); the queue drained by the
real claim/complete code.
"""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from db_fixtures import TEST_MODEL_ID, add_instances, drain_queue
from helpers import wait_for
from sqlalchemy import select, update

from ichnode.db import results
from ichnode.db.models import Instance, InstanceStatus, Study, StudyResult, utcnow
from ichnode.node import monitor as monitor_module
from ichnode.node.monitor import Monitor, ResultPolicy
from ichnode.subtypes import SUBTYPES

#: The claims, locks and SQL here behave differently on the two databases.
pytestmark = pytest.mark.every_backend


def test_a_study_is_resulted_when_it_becomes_stable_even_with_an_hour_long_poll(
    session_factory,
):
    with session_factory.begin() as session:
        add_instances(session, 3, received_at=utcnow())
    drain_queue(session_factory, "w", batch=10)
    results: list[int] = []
    monitor = Monitor(
        session_factory,
        ResultPolicy(dict.fromkeys(SUBTYPES, 0.5), TEST_MODEL_ID),
        stable_seconds=1.0,
        on_result=results.append,
        interval=3600.0,  # only the wake-up at "stable" can result it
    )
    assert monitor.seconds_to_next(utcnow()) is not None
    stop = threading.Event()
    thread = threading.Thread(target=monitor.run, args=(stop,), daemon=True)
    thread.start()
    try:
        [result_id] = wait_for(lambda: results, timeout=30)
    finally:
        stop.set()
        thread.join(10)
    with session_factory() as session:
        assert session.scalar(select(StudyResult.id)) == result_id
    assert monitor.seconds_to_next(utcnow()) is None  # nothing left to wait for


def test_a_study_that_cannot_be_resulted_holds_up_no_other(session_factory, monkeypatch, caplog):
    # An unexpected error while resulting one study (injected into the real compute_result).
    quiet = utcnow() - timedelta(seconds=10)
    with session_factory.begin() as session:
        [bad] = add_instances(session, 1, received_at=quiet)
        bad_study = session.get(Instance, bad).study_id
        add_instances(session, 2, received_at=quiet)
        for study in session.scalars(select(Study)):
            study.last_received_at = quiet
    drain_queue(session_factory, "w", batch=10)
    real = monitor_module.compute_result

    def broken_for_one(session, claimed, policy):  # noqa: ANN001, ANN202
        if claimed.study_id == bad_study:
            raise ZeroDivisionError("injected")
        return real(session, claimed, policy)

    monkeypatch.setattr(monitor_module, "compute_result", broken_for_one)
    monitor = Monitor(
        session_factory, ResultPolicy(dict.fromkeys(SUBTYPES, 0.5), TEST_MODEL_ID), 1.0
    )
    assert len(monitor.run_once()) == 1  # the other study is resulted
    assert monitor.run_once() == [] and monitor.run_once() == []
    assert caplog.text.count(f"study {bad_study} could not be resulted") == 1  # logged once
    # Once more of it arrives, it is tried again (and, the fault gone, resulted).
    monkeypatch.setattr(monitor_module, "compute_result", real)
    with session_factory.begin() as session:
        study = session.get(Study, bad_study)
        study.last_received_at = utcnow() - timedelta(seconds=5)
    [result_id] = monitor.run_once()
    with session_factory() as session:
        assert session.get(StudyResult, result_id).study_id == bad_study


POLICY = ResultPolicy(dict.fromkeys(SUBTYPES, 0.5), TEST_MODEL_ID)


def stable_studies(session_factory, n: int) -> list[int]:  # noqa: ANN001
    """``n`` studies of two scored slices each, quiet for a minute; returns their ids."""
    quiet = utcnow() - timedelta(seconds=60)
    with session_factory.begin() as session:
        for _ in range(n):
            add_instances(session, 2, received_at=quiet)
        session.execute(update(Study).values(last_received_at=quiet))
    drain_queue(session_factory, "w", batch=50)
    with session_factory() as session:
        return sorted(session.scalars(select(Study.id)))


def test_a_claimed_study_is_not_claimed_again_until_its_lease_ends(session_factory):
    [study_id] = stable_studies(session_factory, 1)
    now, before = utcnow(), utcnow() - timedelta(seconds=1)
    with session_factory.begin() as session:
        [first] = results.claim_stable(session, before, 30.0, now=now)
        assert results.claim_stable(session, before, 30.0, now=now + timedelta(seconds=29)) == []
        [again] = results.claim_stable(session, before, 30.0, now=now + timedelta(seconds=31))
    assert first.study_id == again.study_id == study_id
    assert first.claim_token != again.claim_token


def test_a_monitor_whose_claim_lapsed_cannot_write_a_result(session_factory):
    # Monitor A claims the study and stalls; its lease ends; monitor B takes the study over.
    [study_id] = stable_studies(session_factory, 1)
    now, before = utcnow(), utcnow() - timedelta(seconds=1)
    with session_factory.begin() as session:
        [slow] = results.claim_stable(session, before, 30.0, now=now)
    with session_factory.begin() as session:
        [fast] = results.claim_stable(session, before, 30.0, now=now + timedelta(seconds=31))
    with session_factory.begin() as session:
        assert monitor_module.compute_result(session, slow, POLICY) is None
        session.rollback()  # what the monitor does with a result it could not write
    with session_factory.begin() as session:
        written = monitor_module.compute_result(session, fast, POLICY)
        assert written is not None and written.version == 1
    with session_factory() as session:
        study = session.get_one(Study, study_id)
        assert (study.result_version, study.result_claim_token) == (1, None)
        assert study.result_lease_expires_at is None
        assert session.scalars(select(StudyResult.version)).all() == [1]


def test_a_study_whose_monitor_died_is_resulted_by_another_after_the_lease(session_factory):
    # A claim that nobody hands back (its monitor died) holds the study until its lease ends.
    [study_id] = stable_studies(session_factory, 1)
    with session_factory.begin() as session:
        [dead] = results.claim_stable(session, utcnow(), 2.0)
    monitor = Monitor(session_factory, POLICY, stable_seconds=1.0)
    assert monitor.run_once() == []
    [result_id] = wait_for(monitor.run_once, timeout=30)
    with session_factory() as session:
        assert session.get_one(StudyResult, result_id).study_id == dead.study_id == study_id


def test_concurrent_monitors_compute_each_study_once(session_factory, monkeypatch):
    ids = stable_studies(session_factory, 12)
    written: list[int] = []
    computed: list[int] = []
    barrier = threading.Barrier(3)
    real = monitor_module.compute_result

    def counted(session, claimed, policy):  # noqa: ANN001, ANN202 - the real one, counted
        computed.append(claimed.study_id)
        return real(session, claimed, policy)

    monkeypatch.setattr(monitor_module, "compute_result", counted)

    def monitor() -> None:
        barrier.wait(30)
        for result_id in Monitor(session_factory, POLICY, stable_seconds=1.0).run_once():
            written.append(result_id)

    threads = [threading.Thread(target=monitor) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    with session_factory() as session:
        rows = session.execute(select(StudyResult.study_id, StudyResult.version)).all()
    assert sorted(rows) == [(i, 1) for i in ids]
    assert len(written) == len(ids)
    assert sorted(computed) == ids  # claimed: no study was computed by two monitors


def test_slices_scored_by_another_model_are_scored_again_where_their_file_is_still_stored(
    session_factory,
):
    # A model swap came between scoring and resulting: the slice whose file is stored goes
    # back to the queue (one result is one model's); the one whose file is gone keeps its
    # score, and once nothing is left to score again the study is resulted from what it has.
    [study_id] = stable_studies(session_factory, 1)
    with session_factory() as session:
        kept, gone = sorted(session.scalars(select(Instance.path)))
    swapped = ResultPolicy(POLICY.thresholds, "another-model", stored={kept}.__contains__)
    now, before = utcnow(), utcnow() - timedelta(seconds=1)
    with session_factory.begin() as session:
        [claimed] = results.claim_stable(session, before, 30.0, now=now)
        assert monitor_module.compute_result(session, claimed, swapped) is None
        results.release_study(session, claimed)
    with session_factory() as session:
        statuses = dict(session.execute(select(Instance.path, Instance.status)).all())
    assert statuses == {kept: InstanceStatus.QUEUED, gone: InstanceStatus.DONE}

    nothing_stored = ResultPolicy(POLICY.thresholds, "another-model", stored=lambda path: False)
    drain_queue(session_factory, "w", batch=10)
    with session_factory.begin() as session:
        [claimed] = results.claim_stable(session, before, 30.0, now=utcnow())
        written = monitor_module.compute_result(session, claimed, nothing_stored)
        assert written is not None and written.study_id == study_id
        assert written.model_id == "another-model" and written.n_scored == 2
