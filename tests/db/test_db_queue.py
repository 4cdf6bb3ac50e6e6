"""The inference queue on real SQLite files and a real PostgreSQL server."""

# ruff: noqa: F811 - pytest fixtures arrive as arguments named like the imported fixtures

from __future__ import annotations

import multiprocessing
import threading
from datetime import timedelta

import pytest
from db_fixtures import (  # noqa: F401 - fixtures are found by name
    TEST_MODEL_ID,
    add_instances,
    db_url,
    drain_queue,
    drain_queue_process,
    engine,
    fake_probabilities,
    postgres_url,
    session_factory,
    sqlite_url,
)
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from ichnode.db import (
    Instance,
    InstanceStatus,
    Prediction,
    make_engine,
    make_sessionmaker,
    upgrade,
)
from ichnode.db.models import utcnow
from ichnode.db.queue import (
    Completion,
    claim,
    complete,
    complete_many,
    depth,
    fail,
    release,
    requeue,
)
from ichnode.subtypes import SUBTYPES

#: The claims, locks and SQL here behave differently on the two databases.
pytestmark = pytest.mark.every_backend

LEASE_S = 60.0


def _fill(session_factory: sessionmaker[Session], n: int, **kwargs: object) -> list[int]:
    with session_factory.begin() as session:
        return add_instances(session, n, **kwargs)


def _claim(
    session_factory: sessionmaker[Session], worker: str, limit: int, **kwargs: object
) -> list[Instance]:
    with session_factory.begin() as session:
        return claim(session, worker, limit, LEASE_S, **kwargs)


def _get(session_factory: sessionmaker[Session], instance_id: int) -> Instance:
    with session_factory() as session:
        instance = session.get(Instance, instance_id)
        assert instance is not None
        return instance


def test_claim_takes_the_oldest_queued_instances_and_sets_the_lease(session_factory):
    ids = _fill(session_factory, 5)
    now = utcnow()

    batch = _claim(session_factory, "w1", 3, now=now)

    assert [inst.id for inst in batch] == ids[:3]
    assert {inst.claim_token for inst in batch} == {batch[0].claim_token}
    assert len(batch[0].claim_token) == 32
    for inst in batch:
        assert inst.status == InstanceStatus.CLAIMED
        assert inst.claimed_by == "w1"
        assert inst.attempts == 1
        assert inst.lease_expires_at == now + timedelta(seconds=LEASE_S)
    stored = _get(session_factory, ids[0])
    assert stored.status == InstanceStatus.CLAIMED
    assert stored.lease_expires_at.tzinfo is not None


def test_consecutive_claims_are_disjoint_and_end_empty(session_factory):
    ids = _fill(session_factory, 7)

    first = _claim(session_factory, "w1", 4)
    second = _claim(session_factory, "w2", 4)
    third = _claim(session_factory, "w3", 4)

    assert [i.id for i in first] + [i.id for i in second] == ids
    assert third == []
    assert first[0].claim_token != second[0].claim_token


def test_claim_leaves_unexpired_claims_alone(session_factory):
    _fill(session_factory, 2)
    now = utcnow()
    _claim(session_factory, "w1", 2, now=now)

    assert _claim(session_factory, "w2", 2, now=now + timedelta(seconds=LEASE_S - 1)) == []


def test_complete_writes_the_probabilities_in_subtypes_order(session_factory):
    (instance_id,) = _fill(session_factory, 1)
    (inst,) = _claim(session_factory, "w1", 1)
    values = [0.01, 0.02, 0.03, 0.04, 0.05, 0.5]

    with session_factory.begin() as session:
        assert complete(session, inst.id, inst.claim_token, TEST_MODEL_ID, values)

    with session_factory() as session:
        prediction = session.scalars(select(Prediction)).one()
        assert prediction.instance_id == instance_id
        assert prediction.model_id == TEST_MODEL_ID
        assert list(prediction.probabilities) == list(SUBTYPES)
        assert list(prediction.probabilities.values()) == pytest.approx(values)
        done = session.get(Instance, instance_id)
        assert done.status == InstanceStatus.DONE
        assert done.completed_at is not None
        assert done.lease_expires_at is None


def test_complete_refuses_a_wrong_number_of_probabilities(session_factory):
    _fill(session_factory, 1)
    (inst,) = _claim(session_factory, "w1", 1)

    with session_factory.begin() as session, pytest.raises(ValueError, match="expected 6"):
        complete(session, inst.id, inst.claim_token, TEST_MODEL_ID, [0.5] * 5)


def test_stale_worker_cannot_complete_after_its_lease_was_reclaimed(session_factory):
    (instance_id,) = _fill(session_factory, 1)
    start = utcnow()
    (stale,) = _claim(session_factory, "slow", 1, now=start)

    (fresh,) = _claim(session_factory, "fast", 1, now=start + timedelta(seconds=LEASE_S + 1))
    with session_factory.begin() as session:
        stale_done = complete(session, instance_id, stale.claim_token, "stale", [0.9] * 6)
    with session_factory.begin() as session:
        fresh_done = complete(session, instance_id, fresh.claim_token, TEST_MODEL_ID, [0.1] * 6)

    assert fresh.id == instance_id
    assert fresh.claimed_by == "fast"
    assert fresh.attempts == 2
    assert stale_done is False
    assert fresh_done is True
    with session_factory() as session:
        models = session.scalars(select(Prediction.model_id)).all()
    assert models == [TEST_MODEL_ID]


def test_complete_twice_returns_false_the_second_time(session_factory):
    _fill(session_factory, 1)
    (inst,) = _claim(session_factory, "w1", 1)
    with session_factory.begin() as session:
        assert complete(session, inst.id, inst.claim_token, TEST_MODEL_ID, [0.2] * 6)
    with session_factory.begin() as session:
        assert not complete(session, inst.id, inst.claim_token, TEST_MODEL_ID, [0.3] * 6)
    with session_factory() as session:
        assert session.scalar(select(Prediction.p_any)) == pytest.approx(0.2)


def test_complete_many_completes_only_the_rows_still_held(session_factory):
    ids = _fill(session_factory, 3)
    batch = _claim(session_factory, "w1", 3)
    with session_factory.begin() as session:
        assert release(session, "w1") == 3
    again = _claim(session_factory, "w2", 1)
    items = [
        Completion(i.id, i.claim_token, TEST_MODEL_ID, fake_probabilities(i.id)) for i in batch
    ]
    items.append(Completion(again[0].id, again[0].claim_token, TEST_MODEL_ID, [0.5] * 6))

    with session_factory.begin() as session:
        done = complete_many(session, items)

    assert done == {ids[0]}
    with session_factory() as session:
        assert session.scalar(select(func.count()).select_from(Prediction)) == 1


def test_instance_that_used_max_attempts_is_marked_failed_instead_of_claimed(session_factory):
    (instance_id,) = _fill(session_factory, 1)
    now = utcnow()
    for attempt in range(3):
        (inst,) = _claim(session_factory, f"w{attempt}", 1, now=now)
        assert inst.attempts == attempt + 1
        now += timedelta(seconds=LEASE_S + 1)  # each worker dies holding it

    assert _claim(session_factory, "w3", 1, now=now) == []
    failed = _get(session_factory, instance_id)
    assert failed.status == InstanceStatus.FAILED
    assert failed.reason == "gave up after 3 attempts"
    assert failed.claim_token is None


def test_max_attempts_is_a_parameter(session_factory):
    (instance_id,) = _fill(session_factory, 1)
    now = utcnow()
    _claim(session_factory, "w1", 1, now=now, max_attempts=1)

    later = now + timedelta(seconds=LEASE_S + 1)
    assert _claim(session_factory, "w2", 1, now=later, max_attempts=1) == []
    assert _get(session_factory, instance_id).reason == "gave up after 1 attempts"


def test_fail_records_the_reason_only_for_the_holder(session_factory):
    (instance_id,) = _fill(session_factory, 1)
    (inst,) = _claim(session_factory, "w1", 1)

    with session_factory.begin() as session:
        assert not fail(session, instance_id, "not-the-token", "nope")
    with session_factory.begin() as session:
        assert fail(session, instance_id, inst.claim_token, "no pixel data")

    failed = _get(session_factory, instance_id)
    assert failed.status == InstanceStatus.FAILED
    assert failed.reason == "no pixel data"


def test_a_failure_reason_quoting_a_nul_is_recorded(session_factory):
    (instance_id,) = _fill(session_factory, 1)
    (inst,) = _claim(session_factory, "w1", 1)
    with session_factory.begin() as session:
        assert fail(session, instance_id, inst.claim_token, "ValueError: bad VR 'A\x00'")
    assert _get(session_factory, instance_id).reason == "ValueError: bad VR 'A\ufffd'"


def test_release_returns_the_workers_claims_to_the_queue(session_factory):
    ids = _fill(session_factory, 4)
    mine = _claim(session_factory, "leaving", 2)
    _claim(session_factory, "staying", 1)

    with session_factory.begin() as session:
        released = release(session, "leaving")

    assert released == 2
    for inst in mine:
        back = _get(session_factory, inst.id)
        assert back.status == InstanceStatus.QUEUED
        assert back.claimed_by is None
        assert back.claim_token is None
        assert back.attempts == 0
    assert _get(session_factory, ids[2]).status == InstanceStatus.CLAIMED
    assert [i.id for i in _claim(session_factory, "next", 10)] == [ids[0], ids[1], ids[3]]


def test_requeue_puts_scored_instances_back_with_a_fresh_attempt_count(session_factory):
    ids = _fill(session_factory, 3)
    [first, second, third] = _claim(session_factory, "w1", 3)
    with session_factory.begin() as session:
        completions = [Completion(i.id, i.claim_token, "m", [0.1] * 6) for i in (first, second)]
        assert complete_many(session, completions) == {first.id, second.id}
    with session_factory.begin() as session:
        assert requeue(session, [first.id, third.id]) == 1  # the claimed one is not touched
    back = _get(session_factory, ids[0])
    assert back.status == InstanceStatus.QUEUED and back.attempts == 0
    assert back.claim_token is None and back.claimed_by is None
    assert _get(session_factory, ids[1]).status == InstanceStatus.DONE
    assert _get(session_factory, ids[2]).status == InstanceStatus.CLAIMED
    assert [i.id for i in _claim(session_factory, "w2", 10)] == [ids[0]]


def test_depth_counts_every_status(session_factory):
    _fill(session_factory, 4)
    _fill(session_factory, 1, status=InstanceStatus.SKIPPED, reason="not CT")
    (inst,) = _claim(session_factory, "w1", 1)
    with session_factory.begin() as session:
        complete(session, inst.id, inst.claim_token, TEST_MODEL_ID, [0.0] * 6)
    _claim(session_factory, "w1", 1)

    with session_factory() as session:
        counts = depth(session)

    assert counts == {
        InstanceStatus.QUEUED: 2,
        InstanceStatus.CLAIMED: 1,
        InstanceStatus.DONE: 1,
        InstanceStatus.FAILED: 0,
        InstanceStatus.SKIPPED: 1,
    }


def _assert_drained_exactly_once(
    session_factory: sessionmaker[Session], ids: list[int], per_worker: dict[str, list[int]]
) -> None:
    completed = [i for worker_ids in per_worker.values() for i in worker_ids]
    assert sorted(completed) == sorted(ids), "an instance was claimed twice or never"
    with session_factory() as session:
        rows = session.execute(select(Instance.id, Instance.status, Instance.attempts)).all()
        assert {(r.status, r.attempts) for r in rows} == {(InstanceStatus.DONE, 1)}
        predictions = session.scalars(select(Prediction)).all()
    assert sorted(p.instance_id for p in predictions) == sorted(ids)
    for prediction in predictions:
        expected = fake_probabilities(prediction.instance_id)
        assert list(prediction.probabilities.values()) == pytest.approx(expected)


def test_concurrent_threads_claim_disjoint_batches(session_factory):
    ids = _fill(session_factory, 300)
    workers = [f"thread-{k}" for k in range(4)]
    barrier = threading.Barrier(len(workers))
    per_worker: dict[str, list[int]] = {}
    errors: list[BaseException] = []

    def run(worker: str) -> None:
        try:
            per_worker[worker] = drain_queue(session_factory, worker, 7, barrier)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(w,)) for w in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert not errors
    assert not any(thread.is_alive() for thread in threads)
    _assert_drained_exactly_once(session_factory, ids, per_worker)


@pytest.mark.postgres
def test_concurrent_processes_claim_disjoint_batches_on_postgres(postgres_url):
    upgrade(postgres_url)
    pg_engine = make_engine(postgres_url)
    factory = make_sessionmaker(pg_engine)
    ids = _fill(factory, 300)
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(3)
    results = context.Queue()
    processes = [
        context.Process(
            target=drain_queue_process, args=(postgres_url, f"proc-{k}", 5, barrier, results)
        )
        for k in range(3)
    ]
    for process in processes:
        process.start()
    try:
        reports = [results.get(timeout=90) for _ in processes]
    finally:
        for process in processes:
            process.join(timeout=30)

    assert [error for _, _, error in reports if error] == []
    per_worker = {worker: worker_ids for worker, worker_ids, _ in reports}
    _assert_drained_exactly_once(factory, ids, per_worker)
    assert all(process.exitcode == 0 for process in processes)
    assert all(per_worker.values()), "every process should have claimed a share"
    pg_engine.dispose()
