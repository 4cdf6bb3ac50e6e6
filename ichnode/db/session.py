"""Opening the database for a command: engine, sessionmaker, schema upgraded or checked.

Kept apart from the node so that commands that only read the database (``results``,
``audit``, ``resend``) do not import torch.
"""

from __future__ import annotations

from sqlalchemy import Engine
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from ichnode.config import Settings
from ichnode.db import migrate
from ichnode.db.engine import make_engine, make_sessionmaker, sqlite_file
from ichnode.errors import ConfigError


def open_database(
    settings: Settings, *, create: bool = True
) -> tuple[Engine, sessionmaker[Session]]:
    """The process's engine and sessionmaker, with the schema upgraded or checked.

    ``create=False`` is for commands that use what a node wrote (``results``, ``audit``,
    ``resend``, ``worker``): a SQLite file that does not exist, or any database without an
    ichnode schema (an empty PostgreSQL database), is then an error rather than migrated,
    since a new empty database at a mistyped URL would answer "no studies" to "did my study
    arrive?". A schema that is only behind is upgraded when ``auto_upgrade`` is on.
    """
    path = sqlite_file(settings.db_url)
    if not create and path is not None and not path.exists():
        raise ConfigError(
            f"no database at {path}: 'ichnode serve' or 'ichnode db upgrade' creates it "
            "(check db_url)"
        )
    engine = make_engine(settings.db_url)
    if not create and migrate.current_revision(engine) is None:
        engine.dispose()
        raise ConfigError(
            f"database {display_url(settings.db_url)} has no ichnode schema: 'ichnode serve' "
            "or 'ichnode db upgrade' creates it (check db_url)"
        )
    if settings.auto_upgrade:
        migrate.upgrade(engine)
    else:
        migrate.check_schema(engine)
    return engine, make_sessionmaker(engine)


def display_url(url: str) -> str:
    """The database URL without its password, for the ready line and logs."""
    return make_url(url).render_as_string(hide_password=True)
