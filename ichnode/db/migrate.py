"""Schema migrations: bring a database to the code's schema, and check it matches.

The schema changes only through the Alembic revisions in the repository's ``migrations/``
folder. :func:`upgrade` runs them programmatically (``ichnode db upgrade``, or at start-up when
``auto_upgrade`` is on); :func:`check_schema` refuses to run against a database whose schema is
behind the code or newer than it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import Connection, Engine, func, select
from sqlalchemy.engine import URL

from ichnode.db.engine import make_engine
from ichnode.errors import IchnodeError

log = logging.getLogger(__name__)


def _migrations_dir() -> Path:
    """The Alembic script folder: the copy a wheel carries, else the repository's own."""
    packaged = Path(__file__).resolve().parents[1] / "_migrations"  # see setup.py
    if (packaged / "env.py").is_file():
        return packaged
    return Path(__file__).resolve().parents[2] / "migrations"


#: The Alembic script folder (repository root / migrations, or ichnode/_migrations in a wheel).
MIGRATIONS_DIR = _migrations_dir()
#: Key of the PostgreSQL advisory lock that serialises concurrent upgrades.
UPGRADE_LOCK_KEY = 0x1C4_0DE
#: Name under which env.py finds the caller's connection in ``Config.attributes``.
CONNECTION_ATTRIBUTE = "connection"


class SchemaError(IchnodeError):
    """The database's schema does not match this version of ichnode."""


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic config for the ichnode migrations, reusing ``connection`` when given."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    if connection is not None:
        config.attributes[CONNECTION_ATTRIBUTE] = connection
    return config


def head_revision() -> str:
    """The newest revision this code knows."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, f"no migrations in {MIGRATIONS_DIR}"
    return head


def upgrade(url_or_engine: str | URL | Engine, revision: str = "head") -> None:
    """Upgrade the database to ``revision`` (idempotent; concurrent callers take turns).

    The whole upgrade is one transaction: SQLite takes the write lock first
    (``BEGIN IMMEDIATE``), PostgreSQL a transaction-scoped advisory lock.
    """
    _migrate(url_or_engine, revision, command.upgrade, check_known=True)


def downgrade(url_or_engine: str | URL | Engine, revision: str) -> None:
    """Take the database back to ``revision`` (for tests of a revision's downgrade)."""
    _migrate(url_or_engine, revision, command.downgrade, check_known=False)


def _migrate(
    url_or_engine: str | URL | Engine,
    revision: str,
    run: Callable[[Config, str], None],
    *,
    check_known: bool,
) -> None:
    """Run an Alembic command in one locked transaction.

    On SQLite, foreign keys are off while it runs (and checked before the commit): a batch
    migration copies a table into a new one and drops the old, and with foreign keys on
    that drop deletes every row that references the table through ON DELETE CASCADE.
    """
    owned = not isinstance(url_or_engine, Engine)
    engine = url_or_engine if isinstance(url_or_engine, Engine) else make_engine(url_or_engine)
    try:
        with engine.connect() as connection:
            sqlite = connection.dialect.name == "sqlite"
            if sqlite:
                connection.exec_driver_sql("PRAGMA foreign_keys=OFF")  # outside a transaction
                connection.exec_driver_sql("BEGIN IMMEDIATE")
            else:
                connection.execute(select(func.pg_advisory_xact_lock(UPGRADE_LOCK_KEY)))
            try:
                before = MigrationContext.configure(connection).get_current_revision()
                if check_known:
                    _require_known(before)
                run(alembic_config(connection), revision)
                after = MigrationContext.configure(connection).get_current_revision()
                if sqlite:
                    _check_foreign_keys(connection)
                connection.commit()
            finally:
                if sqlite:
                    connection.rollback()
                    connection.exec_driver_sql("PRAGMA foreign_keys=ON")
        if before != after:
            log.info("database schema migrated from %s to %s", before, after)
    finally:
        if owned:
            engine.dispose()


def _check_foreign_keys(connection: Connection) -> None:
    """SchemaError when a migration left a row pointing at nothing (SQLite)."""
    broken = connection.exec_driver_sql("PRAGMA foreign_key_check").all()
    if broken:
        raise SchemaError(f"migration left {len(broken)} rows with a broken foreign key")


def current_revision(bind: Engine | Connection) -> str | None:
    """The database's revision (None when it has no ichnode schema yet)."""
    if isinstance(bind, Connection):
        return MigrationContext.configure(bind).get_current_revision()
    with bind.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def _require_known(revision: str | None) -> None:
    """Raise :class:`SchemaError` when ``revision`` is not one of this code's revisions."""
    if revision is None:
        return
    try:
        ScriptDirectory.from_config(alembic_config()).get_revision(revision)
    except CommandError:
        raise SchemaError(
            f"database schema {revision} is newer than this ichnode; upgrade ichnode"
        ) from None


def check_schema(bind: Engine | Connection) -> None:
    """Raise :class:`SchemaError` unless the database is exactly at this code's head."""
    current = current_revision(bind)
    head = head_revision()
    if current == head:
        return
    if current is None:
        raise SchemaError("database has no ichnode schema; run `ichnode db upgrade`")
    _require_known(current)
    raise SchemaError(
        f"database schema {current} is behind this ichnode ({head}); run `ichnode db upgrade`"
    )
