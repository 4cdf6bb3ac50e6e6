"""The C-STORE path's prepared statements, on a real SQLite file and a real PostgreSQL server:
what they send the driver is what SQLAlchemy sends for the same Core statement, the rows they
write read back as the ORM's, and driver errors arrive as SQLAlchemy's exceptions."""

# ruff: noqa: F811 - pytest fixtures arrive as arguments named like the imported fixtures

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from db_fixtures import (  # noqa: F401 - fixtures are found by name
    CT_IMAGE_STORAGE,
    EXPLICIT_VR_LITTLE_ENDIAN,
    db_url,
    engine,
    new_uid,
    session_factory,
)
from sqlalchemy import Engine, event, insert, select, text
from sqlalchemy.exc import DBAPIError, IntegrityError

from ichnode.db import Instance, InstanceStatus, Series, Study, StudyStatus, ingest
from ichnode.db.ingest import KnownIds, Received, _statements
from ichnode.db.prepared import Prepared, Writer

pytestmark = pytest.mark.every_backend


def received(study: str, series: str, z: float, at: datetime) -> Received:
    return Received(
        study_uid=study,
        series_uid=series,
        sop_uid=new_uid(),
        sop_class_uid=CT_IMAGE_STORAGE,
        transfer_syntax_uid=EXPLICIT_VR_LITTLE_ENDIAN,
        received_at=at,
        calling_ae="TESTSCU",
        modality="CT",
        patient_name="Doe^Jane",
        z=z,
        path="a/b/c.dcm",
        size_bytes=525_000,
        instance_number=3,
    )


def sent_by_sqlalchemy(engine: Engine, statement, values: dict) -> tuple[str, object]:  # noqa: ANN001
    """The SQL and parameters SQLAlchemy hands the driver for ``statement`` and ``values``
    (rolled back)."""
    seen: list[tuple[str, object]] = []

    def capture(conn, cursor, sql, parameters, context, executemany) -> None:  # noqa: ANN001
        seen.append((sql, parameters))

    event.listen(engine, "before_cursor_execute", capture)
    try:
        with engine.connect() as connection:
            connection.execute(statement, values)
            connection.rollback()
    finally:
        event.remove(engine, "before_cursor_execute", capture)
    return seen[-1]


def same(a: object, b: object) -> bool:
    """Equal parameters, a dict's order aside (psycopg's pyformat takes a dict)."""
    return (dict(a) == dict(b)) if isinstance(a, dict) else list(a) == list(b)  # type: ignore[call-overload]


def test_prepared_statements_send_what_sqlalchemy_sends(engine: Engine, session_factory):
    at = datetime(2026, 12, 8, 3, 4, 5, 678901, tzinfo=timezone(timedelta(hours=2)))
    with session_factory() as session:
        first = ingest.record_instance(session, received(new_uid(), new_uid(), 0.0, at))
        session.commit()
    statements = _statements(engine.dialect)
    cases = [
        (ingest._TOUCH_STUDY, statements.touch_study, {"b_study": first.study_id, "b_at": at}),
        (
            ingest._SAME_POSITION,
            statements.same_position,
            {"b_series": first.series_id, "b_z": 1.5},
        ),
        (ingest._COUNT_REPEAT, statements.count_repeat, {"b_sop": "1.2.3"}),
        (ingest._ID_OF_SOP, statements.id_of_sop, {"b_sop": "1.2.3"}),
        (
            ingest._INSERT_INSTANCE,
            statements.insert_instance,
            {
                "study_id": first.study_id,
                "series_id": first.series_id,
                "sop_instance_uid": new_uid(),
                "sop_class_uid": CT_IMAGE_STORAGE,
                "transfer_syntax_uid": EXPLICIT_VR_LITTLE_ENDIAN,
                "path": "x.dcm",
                "size_bytes": 1,
                "z": 2.0,
                "instance_number": 7,
                "status": InstanceStatus.SKIPPED,
                "reason": "duplicate slice position",
                "received_at": at,
            },
        ),
    ]
    for core, prepared, values in cases:
        sql, parameters = sent_by_sqlalchemy(engine, core, values)
        assert prepared.sql == sql
        assert same(prepared.parameters(values), parameters), (sql, parameters)


def test_a_prepared_statement_needs_every_value_it_has_no_default_for(engine: Engine):
    prepared = Prepared(ingest._TOUCH_STUDY, engine.dialect)
    with pytest.raises(KeyError, match="b_study"):
        prepared.parameters({"b_at": datetime.now(UTC)})
    # A value it has no parameter for (a column left out of an INSERT's keys) is not dropped.
    with pytest.raises(KeyError, match="b_extra"):
        prepared.parameters({"b_at": datetime.now(UTC), "b_study": 1, "b_extra": 2})
    # A column whose default is computed (a clock) is not filled in behind the caller's back.
    with pytest.raises(ValueError, match="first_received_at"):
        Prepared(insert(Study), engine.dialect, ["study_instance_uid"])


def test_rows_written_on_a_pooled_connection_read_back_as_the_orms(engine: Engine, session_factory):
    known = KnownIds()
    study, series = new_uid(), new_uid()
    at = datetime(2026, 12, 8, 1, 2, 3, 456789, tzinfo=UTC)
    with Writer.checkout(engine) as db:
        rows = [
            ingest.record_instance(db, received(study, series, z, at), True, known)
            for z in (0.0, 1.0, 1.0)
        ]
        db.commit()
    assert [r.status for r in rows] == [
        InstanceStatus.QUEUED,
        InstanceStatus.QUEUED,
        InstanceStatus.SKIPPED,
    ]
    assert len({r.study_id for r in rows}) == 1 and known.studies[study] == rows[0].study_id
    with session_factory() as session:
        instances = session.scalars(select(Instance).order_by(Instance.id)).all()
        assert [i.status for i in instances] == [r.status for r in rows]
        assert instances[2].reason == "duplicate slice position"
        assert {i.received_at for i in instances} == {at}
        assert [i.times_received for i in instances] == [1, 1, 1]
        assert [i.attempts for i in instances] == [0, 0, 0]
        row = session.scalars(select(Study)).one()
        assert (row.status, row.last_received_at, row.patient_name) == (
            StudyStatus.RECEIVING,
            at,
            "Doe^Jane",
        )
        assert row.result_version == 0
        assert session.scalars(select(Series)).one().modality == "CT"
    # A repeat is counted on the first copy's row.
    with Writer.checkout(engine) as db:
        assert ingest.mark_duplicate(db, instances[0].sop_instance_uid, at)
        assert not ingest.mark_duplicate(db, new_uid(), at)
        db.commit()
    with session_factory() as session:
        assert session.get(Instance, instances[0].id).times_received == 2


def test_an_uncommitted_unit_of_work_is_rolled_back_when_the_connection_goes_back(
    engine: Engine, session_factory
):
    with Writer.checkout(engine) as db:
        ingest.record_instance(db, received(new_uid(), new_uid(), 0.0, datetime.now(UTC)))
    with session_factory() as session:
        assert session.scalars(select(Instance)).all() == []


def test_driver_errors_arrive_as_sqlalchemys(engine: Engine):
    r = received(new_uid(), new_uid(), 0.0, datetime.now(UTC))
    with Writer.checkout(engine) as db:
        ingest.record_instance(db, r)
        db.commit()
    with Writer.checkout(engine) as db, pytest.raises(IntegrityError):
        ingest.record_instance(db, r, skip_duplicate_positions=False)


@pytest.mark.parametrize(
    "db_url", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)
def test_a_connection_the_server_dropped_is_invalidated_and_not_handed_out_again(
    engine: Engine,
):
    backend_pid = Prepared(text("SELECT pg_backend_pid()"), engine.dialect)
    with Writer.checkout(engine) as db:
        pid = db.execute(backend_pid).fetchone()[0]
        with engine.connect() as other:  # the server drops the writer's connection
            other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        with pytest.raises(DBAPIError) as raised:
            ingest.mark_duplicate(db, new_uid(), datetime.now(UTC))
        assert raised.value.connection_invalidated
    with Writer.checkout(engine) as db:  # a new connection, not the dropped one
        assert db.execute(backend_pid).fetchone()[0] != pid
        assert not ingest.mark_duplicate(db, new_uid(), datetime.now(UTC))


def test_a_study_is_touched_once_within_touch_every_and_again_after(
    engine: Engine, session_factory
):
    known = KnownIds()
    study, series = new_uid(), new_uid()
    t0 = datetime(2026, 12, 8, 1, 0, 0, tzinfo=UTC)

    def record(z: float, at: datetime, every: float) -> ingest.Recorded:
        with Writer.checkout(engine) as db:
            recorded = ingest.record_instance(
                db, received(study, series, z, at), True, known, every
            )
            db.commit()
        if recorded.touched:
            known.touch(recorded.study_id)
        return recorded

    def last_received() -> datetime:
        with session_factory() as session:
            return session.scalars(select(Study.last_received_at)).one()

    assert record(0.0, t0, 60.0).touched  # never touched by this process: touched
    later = t0 + timedelta(seconds=1)
    assert not record(1.0, later, 60.0).touched  # within a minute: left alone
    assert last_received() == t0
    assert record(2.0, later + timedelta(seconds=1), 0.0).touched  # 0: every instance
    assert last_received() == later + timedelta(seconds=1)
    known.clear()  # after a database error nothing is taken as touched
    assert record(3.0, later + timedelta(seconds=2), 60.0).touched


def test_touch_every_stays_well_under_stable_seconds():
    assert ingest.touch_every(10.0) == 1.0
    assert ingest.touch_every(3.0) == pytest.approx(0.3)
    assert ingest.touch_every(60.0) == 1.0
    assert ingest.touch_every(0.5) == 0.0  # short windows: every instance
    assert ingest.touch_every(0.0) == 0.0
