"""``ichnode results`` finds a study by what an administrator knows it by (its accession
number), on SQLite and PostgreSQL, through the CLI."""

from __future__ import annotations

import json

import pytest
from db_fixtures import add_instances
from sqlalchemy import select
from typer.testing import CliRunner

from ichnode.cli import app
from ichnode.db.models import Instance
from ichnode.results import list_studies

#: The claims, locks and SQL here behave differently on the two databases.
pytestmark = pytest.mark.every_backend


def _study_with_accession(session_factory, accession: str | None) -> str:  # noqa: ANN001
    with session_factory.begin() as session:
        [instance_id] = add_instances(session, 1)
        study = session.get(Instance, instance_id).study
        study.accession_number = accession
        return study.study_instance_uid


def test_results_by_accession_number(session_factory, db_url):
    wanted = _study_with_accession(session_factory, "ACC-0042")
    _study_with_accession(session_factory, "ACC-0043")
    _study_with_accession(session_factory, None)
    with session_factory() as session:
        assert [r["study_instance_uid"] for r in list_studies(session, accession="ACC-0042")] == [
            wanted
        ]
        assert list_studies(session, accession="ACC-9999") == []
        assert len(list_studies(session)) == 3
    done = CliRunner().invoke(
        app, ["results", "--accession", "ACC-0042", "--db-url", db_url, "--format", "json"]
    )
    assert done.exit_code == 0, done.output
    [row] = json.loads(done.output)
    assert row["study_instance_uid"] == wanted
    assert "ACC-0042" not in done.output  # the rows carry no patient data, this included


def test_the_worklist_reads_a_page_in_the_same_statements_however_many_rows(session_factory):
    """One statement for the page and one for its count: not three more per study (a page of
    200 rows every 5 s per open tab), and the rows are those :func:`study_summary` gives."""
    from sqlalchemy import event

    from ichnode.db.models import Study, StudyResult
    from ichnode.results import study_summary
    from ichnode.web.queries import Query, worklist

    def statements(session) -> tuple[int, list[dict]]:  # noqa: ANN001
        seen: list[str] = []
        engine = session.get_bind()
        listen = lambda *args: seen.append(args[2])  # noqa: E731 - (conn, cursor, statement, ...)
        event.listen(engine, "before_cursor_execute", listen)
        try:
            _, rows = worklist(session, Query(limit=50))
        finally:
            event.remove(engine, "before_cursor_execute", listen)
        return len(seen), rows

    def add_resulted_study() -> None:
        with session_factory.begin() as session:
            ids = add_instances(session, 3)
            study = session.get(Instance, ids[0]).study
            study.result_version = 1
            session.add(
                StudyResult(study=study, version=1, model_id="m", flagged=True,
                            flagged_subtypes="any", key_instance_id=ids[1], n_instances=3,
                            n_scored=3, n_failed=0, n_skipped=0)
            )  # fmt: skip

    add_resulted_study()
    with session_factory() as session:
        few, _ = statements(session)
    for _ in range(4):
        add_resulted_study()
    _study_with_accession(session_factory, None)  # one without a result
    with session_factory() as session:
        many, rows = statements(session)
        assert len(rows) == 6 and many == few
        for row in rows:
            study = session.scalar(
                select(Study).where(Study.study_instance_uid == row["study_instance_uid"])
            )
            expected = study_summary(session, study)
            assert {k: row[k] for k in expected} == expected
