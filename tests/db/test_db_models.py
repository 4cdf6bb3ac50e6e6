"""Engine setup and model behaviour on real SQLite files and a real PostgreSQL server."""

# ruff: noqa: F811 - pytest fixtures arrive as arguments named like the imported fixtures

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from db_fixtures import (  # noqa: F401 - fixtures are found by name
    TEST_MODEL_ID,
    add_instances,
    db_url,
    engine,
    new_uid,
    postgres_url,
    session_factory,
    sqlite_url,
)
from sqlalchemy import select, text
from sqlalchemy.exc import IntegrityError

from ichnode.db import (
    Instance,
    InstanceStatus,
    Prediction,
    Series,
    Study,
    StudyResult,
    StudyStatus,
    is_postgresql,
    make_engine,
)
from ichnode.db.engine import parse_url
from ichnode.db.models import PROBABILITY_COLUMNS, clip
from ichnode.errors import ConfigError
from ichnode.subtypes import SUBTYPES

#: The claims, locks and SQL here behave differently on the two databases.
pytestmark = pytest.mark.every_backend

UTC_PLUS_2 = timezone(timedelta(hours=2))


def test_sqlite_connections_are_durable_and_wait_for_the_lock(sqlite_url):
    engine = make_engine(sqlite_url)
    try:
        with engine.connect() as connection:
            pragma = {
                name: connection.exec_driver_sql(f"PRAGMA {name}").scalar()
                for name in ("journal_mode", "synchronous", "busy_timeout", "foreign_keys")
            }
    finally:
        engine.dispose()
    assert pragma == {
        "journal_mode": "wal",
        "synchronous": 2,
        "busy_timeout": 30000,
        "foreign_keys": 1,
    }


def test_make_engine_creates_the_sqlite_folder(tmp_path: Path):
    path = tmp_path / "a" / "b" / "ichnode.db"
    engine = make_engine(f"sqlite:///{path}")
    try:
        with engine.connect() as connection:
            connection.exec_driver_sql("SELECT 1")
    finally:
        engine.dispose()
    assert path.exists()


def test_plain_postgresql_url_means_psycopg():
    assert parse_url("postgresql://postgres@127.0.0.1/test").drivername == "postgresql+psycopg"


def test_unsupported_database_is_a_config_error():
    with pytest.raises(ConfigError, match="unsupported database 'mysql'"):
        make_engine("mysql://root@localhost/ichnode")


def test_is_postgresql_tells_the_backend(engine, db_url):
    assert is_postgresql(engine) == db_url.startswith("postgresql")


def _study(**kwargs: object) -> Study:
    return Study(study_instance_uid=new_uid(), **kwargs)


def test_times_read_back_as_aware_utc(session_factory):
    received = datetime(2024, 3, 1, 14, 30, 15, 123456, tzinfo=UTC_PLUS_2)
    with session_factory.begin() as session:
        study = _study(first_received_at=received, last_received_at=received)
        session.add(study)
    with session_factory() as session:
        stored = session.get(Study, study.id)
        assert stored.first_received_at == received
        assert stored.first_received_at.tzinfo == timezone.utc
        assert stored.first_received_at.hour == 12


def test_time_comparisons_in_sql_follow_the_instant_not_the_zone(session_factory):
    with session_factory.begin() as session:
        early = _study(last_received_at=datetime(2024, 1, 1, 12, 0, tzinfo=timezone.utc))
        late = _study(last_received_at=datetime(2024, 1, 1, 13, 30, tzinfo=UTC_PLUS_2))
        session.add_all([early, late])
    cutoff = datetime(2024, 1, 1, 11, 45, tzinfo=timezone.utc)
    with session_factory() as session:
        found = session.scalars(select(Study.id).where(Study.last_received_at > cutoff)).all()
    assert found == [early.id]


def test_naive_datetimes_are_refused(session_factory):
    with session_factory() as session:
        session.add(_study(first_received_at=datetime(2024, 1, 1)))
        with pytest.raises(Exception, match="naive datetime"):
            session.flush()


def test_statuses_are_stored_as_their_values(session_factory):
    with session_factory.begin() as session:
        add_instances(session, 1)
        session.add(_study(status=StudyStatus.RESULTED))
    with session_factory() as session:
        assert session.scalar(text("SELECT status FROM instances")) == "queued"
        assert session.scalar(text("SELECT status FROM studies WHERE status <> 'receiving'")) == (
            "resulted"
        )
        assert session.scalar(select(Instance.status)) is InstanceStatus.QUEUED


def test_foreign_keys_are_enforced(session_factory):
    with session_factory() as session:
        session.add(
            Instance(
                study_id=9999,
                series_id=9999,
                sop_instance_uid=new_uid(),
                sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                transfer_syntax_uid="1.2.840.10008.1.2.1",
            )
        )
        with pytest.raises(IntegrityError):
            session.flush()


def test_a_model_scores_an_instance_once(session_factory):
    with session_factory.begin() as session:
        (instance_id,) = add_instances(session, 1)
        session.add(Prediction.from_probabilities(instance_id, TEST_MODEL_ID, [0.1] * 6))
    with session_factory() as session:
        session.add(Prediction.from_probabilities(instance_id, TEST_MODEL_ID, [0.2] * 6))
        with pytest.raises(IntegrityError):
            session.flush()


def test_deleting_a_study_deletes_its_series_instances_and_predictions(session_factory):
    with session_factory.begin() as session:
        (instance_id,) = add_instances(session, 1)
        session.add(Prediction.from_probabilities(instance_id, TEST_MODEL_ID, [0.1] * 6))
    with session_factory.begin() as session:
        session.execute(text("DELETE FROM studies"))
    with session_factory() as session:
        for table in ("series", "instances", "predictions"):
            assert session.scalar(text(f"SELECT count(*) FROM {table}")) == 0


def test_study_result_round_trips_probabilities_and_flagged_subtypes(session_factory):
    values = [0.1, 0.2, 0.3, 0.4, 0.5, 0.9]
    with session_factory.begin() as session:
        (instance_id,) = add_instances(session, 1)
        study_id = session.get(Instance, instance_id).study_id
        result = StudyResult(
            study_id=study_id,
            version=1,
            model_id=TEST_MODEL_ID,
            flagged=True,
            flagged_subtypes=",".join(SUBTYPES[4:]),
            key_instance_id=instance_id,
            n_instances=1,
            n_scored=1,
            n_failed=0,
            n_skipped=0,
        )
        result.set_probabilities(values)
        session.add(result)
    with session_factory() as session:
        stored = session.scalars(select(StudyResult)).one()
        assert list(stored.probabilities.values()) == pytest.approx(values)
        assert stored.flagged_subtype_list == list(SUBTYPES[4:])
        assert stored.key_instance.id == instance_id
        assert session.get(Study, study_id).results == [stored]


def test_probability_columns_follow_the_subtypes():
    assert tuple(f"p_{name}" for name in SUBTYPES) == PROBABILITY_COLUMNS
    columns = [c.name for c in Prediction.__table__.columns if c.name.startswith("p_")]
    assert columns == list(PROBABILITY_COLUMNS)


@pytest.mark.parametrize("bad", [[0.5] * 5, [0.5] * 7, [0.5] * 5 + [1.5], [float("nan")] * 6])
def test_prediction_refuses_bad_model_output(bad):
    with pytest.raises(ValueError):
        Prediction.from_probabilities(1, TEST_MODEL_ID, bad)


def test_clip_cuts_text_to_the_column_length():
    assert clip(Study.study_date, "2024-01-01") == "2024-01-"
    assert clip(Study.study_date, None) is None
    assert clip(Series.series_description, "axial") == "axial"
