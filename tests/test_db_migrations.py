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

REPO_ROOT = Path(__file__).resolve().parents[1]
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
