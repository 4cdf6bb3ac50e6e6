"""The ``ichnode`` entry point: ``--version`` as a real process; usage errors (one line that
names the option, exit 2, no click class names), help, and read-only commands that refuse a
database without an ichnode schema instead of migrating it (real PostgreSQL, real SQLite)
through the same entry point in process (:func:`helpers.run_cli`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from db_fixtures import create_postgres_database, drop_postgres_database
from helpers import project_version, run_cli
from sqlalchemy import create_engine, inspect

ICHNODE = [sys.executable, "-m", "ichnode"]
CLICK_CLASS_NAMES = ("BadParameter", "NoSuchOption", "UsageError", "ClickException")


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(*args)


def test_version_prints_the_project_version():
    done = subprocess.run([*ICHNODE, "--version"], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"ichnode {project_version()}"


@pytest.mark.parametrize("command", ["predict", "results", "train"])
def test_help_shows_flags_without_a_value_type(command: str):
    """A flag takes no value, so its help line names no type; options that take one do."""
    done = run_cli(command, "--help", env={"COLUMNS": "120"})
    assert done.returncode == 0, done.stderr
    assert "<bool>" not in done.stdout
    assert "--help " in done.stdout
    assert "<int>" in done.stdout or "<path>" in done.stdout


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["synth", "--out", "x", "--studies", "0"], "'--studies'"),
        (["serve", "--port", "eleven"], "'--port'"),
        (["results", "--limit", "many"], "'--limit'"),
        (["results", "--format", "xml"], "'--format'"),
        (["results", "--since", "last week"], "'--since'"),
        (["results", "--flaged"], "--flaged"),
    ],
)
def test_usage_errors_name_the_option_and_exit_2(args: list[str], option: str):
    done = _run(*args)
    assert done.returncode == 2, (done.stdout, done.stderr)
    first = done.stderr.splitlines()[0]
    assert first.startswith("error: ") and option in first, done.stderr
    assert not any(name in done.stderr for name in CLICK_CLASS_NAMES), done.stderr
    assert "Traceback" not in done.stderr


def test_an_unknown_command_is_a_usage_error():
    done = _run("resluts")
    assert done.returncode == 2
    assert done.stderr.splitlines()[0].startswith("error: No such command 'resluts'.")


READ_ONLY = (["results"], ["audit"], ["worker", "--exit-when-empty"])


@pytest.fixture
def unmigrated_postgres_url():
    """A fresh, empty database on the real PostgreSQL server (dropped afterwards)."""
    url = create_postgres_database()
    try:
        yield url
    finally:
        drop_postgres_database(url)


def _tables(url: str) -> list[str]:
    engine = create_engine(url)
    try:
        return inspect(engine).get_table_names()
    finally:
        engine.dispose()


@pytest.mark.postgres
@pytest.mark.parametrize("args", READ_ONLY, ids=lambda a: a[0])
def test_read_only_commands_refuse_an_unmigrated_postgres_database(unmigrated_postgres_url, args):
    done = _run(*args, "--db-url", unmigrated_postgres_url)
    assert done.returncode == 2, (done.stdout, done.stderr)
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("error: database postgresql+psycopg://") and line.endswith(
        "has no ichnode schema: 'ichnode serve' or 'ichnode db upgrade' creates it (check db_url)"
    )
    assert _tables(unmigrated_postgres_url) == []


def test_read_only_commands_refuse_an_empty_sqlite_file(tmp_path: Path):
    path = tmp_path / "empty.db"
    path.touch()
    url = f"sqlite:///{path}"
    done = _run("results", "--db-url", url)
    assert done.returncode == 2 and "has no ichnode schema" in done.stderr
    assert _tables(url) == []
