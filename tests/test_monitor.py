"""The study monitor's loop: it results a study when it becomes stable, not at its next poll.

Real databases (SQLite and PostgreSQL through ``session_factory``); the queue drained by the
real claim/complete code.
"""

from __future__ import annotations

import threading

from db_fixtures import TEST_MODEL_ID, add_instances, drain_queue
from helpers import wait_for
from sqlalchemy import select

from ichnode.db.models import StudyResult, utcnow
from ichnode.node.monitor import Monitor, ResultPolicy
from ichnode.subtypes import SUBTYPES


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
