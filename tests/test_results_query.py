"""``ichnode results`` finds a study by what an administrator knows it by (its accession
number), on SQLite and PostgreSQL, through the CLI."""

from __future__ import annotations

import json

from db_fixtures import add_instances
from typer.testing import CliRunner

from ichnode.cli import app
from ichnode.db.models import Instance
from ichnode.results import list_studies


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
