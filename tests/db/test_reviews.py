"""Reviews in the database: what a verdict means (the truth an export writes), the agreement
per model id and month, and ``ichnode review`` / ``ichnode review stats`` through CliRunner,
on real SQLite files."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest
from db_fixtures import add_instances
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

from ichnode.cli import app
from ichnode.db import make_engine, make_sessionmaker
from ichnode.db.models import Instance, Review, StudyResult, StudyStatus
from ichnode.review import ReviewError, agreement, submit, truth

PROBABILITIES = [0.01, 0.9, 0.02, 0.03, 0.04, 0.95]


@pytest.fixture
def sessions(db_url: str):
    engine = make_engine(db_url)
    try:
        yield make_sessionmaker(engine)
    finally:
        engine.dispose()


def _resulted(sessions: sessionmaker[Session], flagged: bool, model_id: str = "model-a") -> str:
    """A resulted study of 3 slices (flagged for IPH or not); its StudyInstanceUID."""
    with sessions.begin() as session:
        ids = add_instances(session, 3)
        study = session.get(Instance, ids[0]).study
        result = StudyResult(
            study_id=study.id, version=1, model_id=model_id, flagged=flagged,
            flagged_subtypes="intraparenchymal,any" if flagged else "", n_instances=3,
            n_scored=3, n_failed=0, n_skipped=0,
        )  # fmt: skip
        result.set_probabilities(PROBABILITIES)
        session.add(result)
        study.result_version = 1
        study.status = StudyStatus.RESULTED
        return study.study_instance_uid


def _truth(sessions, uid: str):
    with sessions() as session:
        review = session.query(Review).order_by(Review.id.desc()).first()
        return truth(review, session.get(StudyResult, review.study_result_id))


@pytest.mark.parametrize(
    ("flagged", "verdict", "subtypes", "hemorrhage", "names"),
    [
        (True, "confirmed", None, True, ("intraparenchymal",)),  # the result's subtypes
        (True, "confirmed", ["subdural"], True, ("subdural",)),  # corrected
        (True, "rejected", None, False, ()),  # a false alarm
        (False, "confirmed", None, False, ()),  # a true negative
        (False, "missed", ["epidural"], True, ("epidural",)),  # a false negative
    ],
)
def test_a_verdict_turns_into_the_truth_of_the_study(
    sessions, flagged, verdict, subtypes, hemorrhage, names
):
    uid = _resulted(sessions, flagged)
    with sessions.begin() as session:
        submit(session, uid, verdict, reviewer="dr", subtypes=subtypes)
    found = _truth(sessions, uid)
    assert (found.hemorrhage, found.subtypes, found.slices) == (hemorrhage, names, None)


@pytest.mark.every_backend
def test_agreement_counts_the_latest_review_per_model_and_month(sessions):
    tp, fp, fn, tn = (_resulted(sessions, f) for f in (True, True, False, False))
    other = _resulted(sessions, True, model_id="model-b")
    with sessions.begin() as session:
        submit(session, tp, "rejected", reviewer="a")  # superseded below
        submit(session, tp, "confirmed", reviewer="b")
        submit(session, fp, "rejected", reviewer="a")
        submit(session, fn, "missed", reviewer="a", subtypes=["subdural"])
        submit(session, tn, "confirmed", reviewer="a")
        submit(session, other, "confirmed", reviewer="a")
    with sessions() as session:
        rows = agreement(session)
    month = datetime.now(timezone.utc).strftime("%Y-%m")
    assert [(r.model_id, r.month) for r in rows] == [("model-a", month), ("model-b", month)]
    a = rows[0]
    assert (a.reviewed, a.flagged, a.confirmed, a.rejected) == (4, 2, 1, 1)
    assert (a.true_positive, a.false_positive, a.false_negative, a.true_negative) == (1, 1, 1, 1)
    assert a.sensitivity == 0.5 and a.specificity == 0.5
    assert rows[1].specificity is None and rows[1].sensitivity == 1.0


def test_a_review_of_a_study_without_a_result_is_refused(sessions):
    with sessions.begin() as session:
        ids = add_instances(session, 1)
        uid = session.get(Instance, ids[0]).study.study_instance_uid
    with sessions.begin() as session, pytest.raises(ReviewError, match="no result yet"):
        submit(session, uid, "confirmed", reviewer="dr")


def test_the_cli_records_a_review_and_prints_the_stats(db_url, sessions):
    uid = _resulted(sessions, True)
    runner = CliRunner()
    args = [
        "--study",
        uid,
        "--verdict",
        "rejected",
        "--reviewer",
        "Dr Who",
        "--note",
        "calcification",
    ]
    done = runner.invoke(app, ["review", "--db-url", db_url, *args])
    assert done.exit_code == 0, done.output
    assert "rejected on version 1" in done.output
    with sessions() as session:
        [review] = session.query(Review).all()
        assert (review.reviewer, review.note) == ("Dr Who", "calcification")
    stats = runner.invoke(app, ["review", "stats", "--db-url", db_url, "--json"])
    assert stats.exit_code == 0, stats.output
    [row] = json.loads(stats.output)
    assert (row["flagged"], row["rejected"], row["specificity"]) == (1, 1, 0.0)
    table = runner.invoke(app, ["review", "stats", "--db-url", db_url, "--overall"])
    assert "model-a" in table.output and "all" in table.output


def test_the_cli_refuses_an_unknown_verdict_in_one_line(db_url, sessions, capsys):
    from ichnode.cli import main

    uid = _resulted(sessions, False)
    argv = ["ichnode", "review", "--db-url", db_url, "--study", uid, "--verdict", "perhaps"]
    with pytest.MonkeyPatch.context() as mp, pytest.raises(SystemExit) as stop:
        mp.setattr("sys.argv", argv)
        main()
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.strip() == "error: unknown verdict 'perhaps': expected confirmed, rejected, missed"


@pytest.mark.every_backend
def test_the_worklist_reads_the_newest_verdict_and_filters_on_reviewed(sessions):
    from ichnode.db.worklist import Query, page

    reviewed, waiting = _resulted(sessions, True), _resulted(sessions, False)
    with sessions.begin() as session:
        submit(session, reviewed, "rejected", reviewer="a")
        submit(session, reviewed, "confirmed", reviewer="b")  # the newest counts
    with sessions() as session:
        _, rows = page(session, Query())
        verdicts = {r.study.study_instance_uid: r.verdict for r in rows}
        assert verdicts == {reviewed: "confirmed", waiting: None}
        total, rows = page(session, Query(reviewed=True))
        assert total == 1 and [r.study.study_instance_uid for r in rows] == [reviewed]
        total, rows = page(session, Query(reviewed=False))
        assert total == 1 and [r.study.study_instance_uid for r in rows] == [waiting]


def test_since_keeps_the_reviews_written_from_then_on(sessions):
    from datetime import timedelta

    old, new = _resulted(sessions, True), _resulted(sessions, True)
    with sessions.begin() as session:
        submit(session, old, "confirmed", reviewer="a")
        submit(session, new, "rejected", reviewer="a")
        first = session.query(Review).order_by(Review.id).first()
        first.created_at = first.created_at - timedelta(days=40)
    cut = datetime.now(timezone.utc) - timedelta(days=1)
    with sessions() as session:
        [row] = agreement(session, cut, by_month=False)
    assert (row.reviewed, row.rejected, row.month) == (1, 1, "all")


def test_any_is_implied_and_accepted_among_the_subtypes(sessions):
    uid = _resulted(sessions, False)
    with sessions.begin() as session:
        made = submit(session, uid, "missed", reviewer="dr", subtypes=["any", "subdural"])
    assert made["subtypes"] == ["subdural"]
