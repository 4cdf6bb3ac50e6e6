"""Schema migrations: bring a database to the code's schema, and check it matches.

The schema changes only through the Alembic revisions in the repository's ``migrations/``
folder. :func:`upgrade` runs them programmatically (``ichnode db upgrade``, or at start-up when
``auto_upgrade`` is on); :func:`check_schema` refuses to run against a database whose schema is
behind the code or newer than it.
"""

from __future__ import annotations

import logging
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
    owned = not isinstance(url_or_engine, Engine)
    engine = make_engine(url_or_engine) if owned else url_or_engine
    try:
        with engine.connect() as connection:
            if connection.dialect.name == "sqlite":
                connection.exec_driver_sql("BEGIN IMMEDIATE")
            else:
                connection.execute(select(func.pg_advisory_xact_lock(UPGRADE_LOCK_KEY)))
            before = MigrationContext.configure(connection).get_current_revision()
            _require_known(before)
            command.upgrade(alembic_config(connection), revision)
            after = MigrationContext.configure(connection).get_current_revision()
            connection.commit()
        if before != after:
            log.info("database schema upgraded from %s to %s", before, after)
    finally:
        if owned:
            engine.dispose()


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
