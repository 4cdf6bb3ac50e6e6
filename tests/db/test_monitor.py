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
from sqlalchemy import select

from ichnode.db.models import Instance, Study, StudyResult, utcnow
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

    def broken_for_one(session, study_id, policy):  # noqa: ANN001, ANN202
        if study_id == bad_study:
            raise ZeroDivisionError("injected")
        return real(session, study_id, policy)

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
