"""``ichnode results`` through typer's CliRunner on real SQLite databases: ``--since`` (naive
values are UTC, aware ones are converted), the table at 80 and 200 columns, and the CSV."""

from __future__ import annotations

import csv
import io
import json
from datetime import datetime, timedelta, timezone

import pytest
from db_fixtures import add_instances
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

from ichnode.cli import app
from ichnode.db import make_engine, make_sessionmaker
from ichnode.db.models import Instance, StudyResult, StudyStatus
from ichnode.results_view import short_uid
from ichnode.subtypes import SUBTYPES

PROBABILITIES = [0.012, 0.153, 0.047, 0.861, 0.904, 0.957]
#: Study received 2020-01-01 09:30 UTC (= 11:30 at +02:00), and one a day earlier.
RECEIVED = datetime(2020, 1, 1, 9, 30, tzinfo=timezone.utc)


@pytest.fixture
def db(db_url: str):
    engine = make_engine(db_url)
    try:
        yield db_url, make_sessionmaker(engine)
    finally:
        engine.dispose()


def _resulted_study(
    sessions: sessionmaker[Session], received: datetime, accession: str = "ACC-0042"
) -> str:
    """A resulted study flagged for SAH, SDH and any; returns its StudyInstanceUID."""
    with sessions.begin() as session:
        ids = add_instances(session, 3, received_at=received)
        study = session.get(Instance, ids[0]).study
        study.first_received_at = study.last_received_at = received
        study.accession_number = accession
        result = StudyResult(
            study_id=study.id,
            version=1,
            model_id="ichnet-test",
            flagged=True,
            flagged_subtypes="subarachnoid,subdural,any",
            key_instance_id=ids[1],
            n_instances=3,
            n_scored=3,
            n_failed=0,
            n_skipped=0,
        )
        result.set_probabilities(PROBABILITIES)
        session.add(result)
        study.result_version = 1
        study.status = StudyStatus.RESULTED
        return study.study_instance_uid


def _results(url: str, *args: str, columns: int = 80):
    done = CliRunner().invoke(
        app, ["results", "--db-url", url, *args], env={"COLUMNS": str(columns)}
    )
    assert done.exit_code == 0, (done.output, done.exception)
    return done.output


@pytest.mark.parametrize(
    ("since", "included"),
    [
        ("2020-01-01", True),  # a plain date: midnight UTC
        ("2020-01-01T00:00:00", True),  # naive: UTC
        ("2020-01-01T09:30:00", True),
        ("2020-01-01T09:30:01", False),
        ("2020-01-01T11:30:00+02:00", True),  # aware: 09:30 UTC
        ("2020-01-01T11:30:01+02:00", False),
        ("2020-01-01T09:30:00Z", True),
        ("2020-01-02", False),
    ],
)
def test_since_naive_is_utc_and_aware_is_converted(db, since: str, included: bool):
    url, sessions = db
    wanted = _resulted_study(sessions, RECEIVED)
    _resulted_study(sessions, RECEIVED - timedelta(days=1), accession="OLD")
    rows = json.loads(_results(url, "--since", since, "--format", "json"))
    assert [r["study_instance_uid"] for r in rows] == ([wanted] if included else [])


def test_since_that_is_not_a_date_is_a_usage_error_naming_the_option(db):
    url, _ = db
    done = CliRunner().invoke(app, ["results", "--db-url", url, "--since", "yesterday"])
    assert done.exit_code == 2
    assert "--since" in done.output and "yesterday" in done.output


def test_audit_accepts_a_naive_and_an_aware_since(db):
    url, _ = db
    for since in ("2020-01-01", "2020-01-01T00:00:00", "2020-01-01T02:00:00+02:00"):
        done = CliRunner().invoke(app, ["audit", "--db-url", url, "--since", since])
        assert done.exit_code == 0, (since, done.output, done.exception)
        assert "Associations" in done.output and "Deliveries" in done.output


@pytest.mark.parametrize("columns", [80, 200])
def test_table_prints_every_probability_in_full(db, columns: int):
    url, sessions = db
    uid = _resulted_study(sessions, RECEIVED)
    out = _results(url, columns=columns)
    assert max(len(line) for line in out.splitlines()) <= columns
    line = next(x for x in out.splitlines() if "ACC-0042" in x)
    for p in PROBABILITIES:
        assert f"{p:.3f}" in line, (p, out)
    assert "…" not in line.replace(short_uid(uid), "")  # nothing else is cut short
    assert "SAH SDH any" in line
    header = next(x for x in out.splitlines() if "EDH" in x)
    assert header.split()[-6:] == ["EDH", "IPH", "IVH", "SAH", "SDH", "any"]
    if columns == 80:
        assert short_uid(uid) in line and uid not in out
    else:
        assert uid in line and "2020-01-01 09:30:00" in line


def test_short_uid_keeps_head_and_tail():
    assert short_uid("2.25.123456789012345678901234567890") == "2.25.123…7890"
    assert short_uid("1.2.3.4") == "1.2.3.4"


def test_study_detail_table_fits_80_columns(db):
    url, sessions = db
    uid = _resulted_study(sessions, RECEIVED)
    out = _results(url, "--study", uid)
    assert max(len(line) for line in out.splitlines()) <= 80
    assert "slices (by z)" in out and out.count("0.153") == 1


def test_csv_has_subtypes_counts_times_and_json_booleans(db):
    url, sessions = db
    uid = _resulted_study(sessions, RECEIVED)
    [row] = list(csv.DictReader(io.StringIO(_results(url, "--format", "csv"))))
    assert row["study_instance_uid"] == uid
    assert row["flagged"] == "true"
    assert row["flagged_subtypes"] == "subarachnoid;subdural;any"
    assert row["n_scored"] == "3" and row["n_instances"] == "3"
    assert row["received_at"].startswith("2020-01-01T09:30:00")
    assert row["last_received_at"].startswith("2020-01-01T09:30:00")
    assert row["resulted_at"] != ""
    assert [float(row[f"p_{n}"]) for n in SUBTYPES] == PROBABILITIES
    assert "ACC-0042" not in _results(url, "--format", "csv")  # machine output: no identifiers
