"""Alembic migrations: they equal the models, are idempotent, and guard the schema version."""

# ruff: noqa: F811 - pytest fixtures arrive as arguments named like the imported fixtures

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from db_fixtures import empty_db_url, postgres_url, sqlite_url  # noqa: F401 - fixtures
from sqlalchemy import inspect, text

from ichnode.db import (
    Base,
    SchemaError,
    check_schema,
    current_revision,
    head_revision,
    make_engine,
    migrate,
    upgrade,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
FUTURE_REVISION = "ffffffffffff"


def test_migrations_equal_the_models(empty_db_url):
    upgrade(empty_db_url)

    engine = make_engine(empty_db_url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(
                connection,
                opts={"compare_type": True, "compare_server_default": True},
            )
            differences = compare_metadata(context, Base.metadata)
    finally:
        engine.dispose()
    assert differences == []


def test_create_all_builds_the_same_tables_as_the_migrations(empty_db_url, sqlite_url):
    upgrade(empty_db_url)
    migrated = make_engine(empty_db_url)
    created = make_engine(sqlite_url.replace("ichnode.db", "created.db"))
    try:
        Base.metadata.create_all(created)
        tables = set(inspect(created).get_table_names())
        assert set(inspect(migrated).get_table_names()) == tables | {"alembic_version"}
    finally:
        migrated.dispose()
        created.dispose()


def test_alembic_check_command_finds_no_drift(empty_db_url):
    env = os.environ | {"ICHNODE_DB_URL": empty_db_url}
    alembic = [sys.executable, "-m", "alembic"]
    for args in (["upgrade", "head"], ["check"]):
        result = subprocess.run(
            [*alembic, *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stderr
    assert "No new upgrade operations detected" in result.stdout + result.stderr


def test_upgrade_is_idempotent(empty_db_url):
    upgrade(empty_db_url)
    upgrade(empty_db_url)

    engine = make_engine(empty_db_url)
    try:
        assert current_revision(engine) == head_revision()
        check_schema(engine)
    finally:
        engine.dispose()


def test_upgrade_accepts_an_engine_and_leaves_it_usable(empty_db_url):
    engine = make_engine(empty_db_url)
    try:
        upgrade(engine)
        with engine.connect() as connection:
            assert connection.execute(text("SELECT count(*) FROM instances")).scalar() == 0
    finally:
        engine.dispose()


def test_concurrent_upgrades_take_turns(empty_db_url):
    errors: list[BaseException] = []

    def run() -> None:
        try:
            upgrade(empty_db_url)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert errors == []
    engine = make_engine(empty_db_url)
    try:
        check_schema(engine)
    finally:
        engine.dispose()


def test_check_schema_asks_for_an_upgrade_on_an_empty_database(empty_db_url):
    engine = make_engine(empty_db_url)
    try:
        assert current_revision(engine) is None
        with pytest.raises(SchemaError, match="run `ichnode db upgrade`"):
            check_schema(engine)
    finally:
        engine.dispose()


def _stamp(url: str, revision: str) -> None:
    engine = make_engine(url)
    try:
        with engine.begin() as connection:
            connection.execute(
                text("UPDATE alembic_version SET version_num = :rev"), {"rev": revision}
            )
    finally:
        engine.dispose()


def test_check_schema_refuses_a_database_newer_than_the_code(empty_db_url):
    upgrade(empty_db_url)
    _stamp(empty_db_url, FUTURE_REVISION)

    engine = make_engine(empty_db_url)
    try:
        with pytest.raises(SchemaError) as info:
            check_schema(engine)
    finally:
        engine.dispose()
    assert str(info.value) == (
        f"database schema {FUTURE_REVISION} is newer than this ichnode; upgrade ichnode"
    )


def test_upgrade_refuses_a_database_newer_than_the_code(empty_db_url):
    upgrade(empty_db_url)
    _stamp(empty_db_url, FUTURE_REVISION)

    with pytest.raises(SchemaError, match="newer than this ichnode"):
        upgrade(empty_db_url)


NEXT_REVISION = '''"""A later revision (test only).

Revision ID: 9002
Revises: {head}
"""

import sqlalchemy as sa
from alembic import op

revision = "9002"
down_revision = "{head}"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table("later", sa.Column("id", sa.Integer(), primary_key=True))


def downgrade() -> None:
    op.drop_table("later")
'''


def test_check_schema_asks_for_an_upgrade_when_the_code_is_newer(
    empty_db_url, tmp_path, monkeypatch
):
    upgrade(empty_db_url)
    later = tmp_path / "migrations"
    shutil.copytree(migrate.MIGRATIONS_DIR, later, ignore=shutil.ignore_patterns("__pycache__"))
    head = head_revision()
    (later / "versions" / "9002_later.py").write_text(NEXT_REVISION.replace("{head}", head))
    monkeypatch.setattr(migrate, "MIGRATIONS_DIR", later)

    engine = make_engine(empty_db_url)
    try:
        with pytest.raises(SchemaError, match=rf"{head} is behind .*run `ichnode db upgrade`"):
            check_schema(engine)
        upgrade(engine)
        assert current_revision(engine) == "9002"
        check_schema(engine)
    finally:
        engine.dispose()


def _insert_0006_rows(url: str) -> None:
    """A study reported to two destinations and resent once, as revision 0006 stored it: the
    object columns copied into every outbox row; the sender known only to the audit table."""
    engine = make_engine(url)
    try:
        with engine.begin() as c:
            c.execute(
                text(
                    "INSERT INTO associations (id, calling_ae, peer_address, peer_port, "
                    "started_at, n_received, n_failed, outcome) VALUES "
                    "(1, 'CT1', '10.0.0.7', 4000, :early, 4, 0, 'released'), "
                    "(2, 'CT1', '10.0.0.9', 4001, :late, 0, 0, 'rejected: unknown AE')"
                ),
                {"early": "2026-12-01 10:00:00", "late": "2026-12-01 10:00:30"},
            )
            c.execute(
                text(
                    "INSERT INTO studies (id, study_instance_uid, calling_ae, first_received_at, "
                    "last_received_at, status, result_version) VALUES "
                    "(1, '1.2.3', 'CT1', :t, :t, 'resulted', 1)"
                ),
                {"t": "2026-12-01 10:01:00"},
            )
            c.execute(
                text(
                    "INSERT INTO study_results (id, study_id, version, model_id, flagged, "
                    "flagged_subtypes, n_instances, n_scored, n_failed, n_skipped, created_at, "
                    "report_status) VALUES (1, 1, 1, 'm', FALSE, '', 4, 4, 0, 0, :t, 'done')"
                ),
                {"t": "2026-12-01 10:01:05"},
            )
            rows = [
                (1, "pacs", "sr", "1.2.3.100", "1.2.3/1.2.3.10/1.2.3.100.dcm", "sent"),
                (2, "pacs", "summary", "1.2.3.101", "1.2.3/1.2.3.11/1.2.3.101.dcm", "sent"),
                (3, "return:CT1", "sr", "1.2.3.100", "1.2.3/1.2.3.10/1.2.3.100.dcm", "failed"),
                (4, "return:CT1", "sr", "1.2.3.100", "1.2.3/1.2.3.10/1.2.3.100.dcm", "pending"),
            ]
            for entry_id, destination, kind, sop, path, status in rows:
                c.execute(
                    text(
                        "INSERT INTO outbox (id, study_result_id, destination, ae_title, host, "
                        "port, kind, sop_instance_uid, path, status, attempts, next_attempt_at, "
                        "created_at) VALUES (:id, 1, :dest, 'X', 'h', 104, :kind, :sop, :path, "
                        ":status, 1, :t, :t)"
                    ),
                    {
                        "id": entry_id,
                        "dest": destination,
                        "kind": kind,
                        "sop": sop,
                        "path": path,
                        "status": status,
                        "t": f"2026-12-01 10:01:0{5 + entry_id}",
                    },
                )
                c.execute(
                    text(
                        "INSERT INTO delivery_attempts (outbox_id, at, status_code) "
                        "VALUES (:id, :t, 0)"
                    ),
                    {"id": entry_id, "t": "2026-12-01 10:02:00"},
                )
    finally:
        engine.dispose()


def test_0007_makes_report_objects_of_the_outbox_rows_and_keeps_the_sender(empty_db_url):
    upgrade(empty_db_url, "0006")
    _insert_0006_rows(empty_db_url)
    upgrade(empty_db_url)

    engine = make_engine(empty_db_url)
    try:
        with engine.connect() as c:
            objects = c.execute(
                text(
                    "SELECT id, study_result_id, kind, sop_class_uid, series_instance_uid, "
                    "sop_instance_uid, path FROM report_objects ORDER BY id"
                )
            ).all()
            outbox = c.execute(
                text("SELECT id, report_object_id, destination, status FROM outbox ORDER BY id")
            ).all()
            address = c.execute(text("SELECT calling_address FROM studies")).scalar_one()
            attempted = c.execute(text("SELECT outbox_id FROM delivery_attempts")).scalars().all()
    finally:
        engine.dispose()
    sr, summary = objects
    assert tuple(sr)[1:] == (
        1, "sr", "1.2.840.10008.5.1.4.1.1.88.33", "1.2.3.10", "1.2.3.100",
        "1.2.3/1.2.3.10/1.2.3.100.dcm",
    )  # fmt: skip
    assert tuple(summary)[1:] == (
        1, "summary", "1.2.840.10008.5.1.4.1.1.7", "1.2.3.11", "1.2.3.101",
        "1.2.3/1.2.3.11/1.2.3.101.dcm",
    )  # fmt: skip
    assert [tuple(row) for row in outbox] == [
        (1, sr.id, "pacs", "sent"),
        (2, summary.id, "pacs", "sent"),
        (3, sr.id, "return:CT1", "failed"),
        (4, sr.id, "return:CT1", "pending"),
    ]
    assert address == "10.0.0.7"  # the accepted association, not the later rejected one
    assert sorted(attempted) == [1, 2, 3, 4]  # copying the outbox table cascaded nothing


def test_0007_downgrades_to_the_outbox_columns(empty_db_url):
    upgrade(empty_db_url, "0006")
    _insert_0006_rows(empty_db_url)
    upgrade(empty_db_url)
    migrate.downgrade(empty_db_url, "0006")
    engine = make_engine(empty_db_url)
    try:
        with engine.connect() as c:
            rows = c.execute(
                text("SELECT id, study_result_id, kind, sop_instance_uid FROM outbox ORDER BY id")
            ).all()
            attempts = c.execute(text("SELECT count(*) FROM delivery_attempts")).scalar_one()
    finally:
        engine.dispose()
    assert [tuple(r) for r in rows] == [
        (1, 1, "sr", "1.2.3.100"),
        (2, 1, "summary", "1.2.3.101"),
        (3, 1, "sr", "1.2.3.100"),
        (4, 1, "sr", "1.2.3.100"),
    ]
    assert attempts == 4
