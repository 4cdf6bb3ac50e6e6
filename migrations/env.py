"""Alembic environment for ichnode.

Programmatic use (:func:`ichnode.db.migrate.upgrade`) passes its connection in
``config.attributes["connection"]``. From the command line (``alembic upgrade head``,
``alembic check`` at the repository root) the URL comes from ``-x db_url=...``, else the
``ICHNODE_DB_URL`` environment variable, else ichnode's settings (``config/ichnode.toml``).
"""

from __future__ import annotations

import os
from logging.config import fileConfig

from alembic import context
from sqlalchemy import Connection

from ichnode.db.engine import make_engine
from ichnode.db.migrate import CONNECTION_ATTRIBUTE
from ichnode.db.models import Base, UTCDateTime

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    url = context.get_x_argument(as_dictionary=True).get("db_url") or os.environ.get(
        "ICHNODE_DB_URL"
    )
    if url:
        return url
    from ichnode.config import load_settings

    return load_settings().db_url


def _render_item(type_: str, obj: object, autogen_context: object) -> str | bool:
    """Render ichnode's column types as plain SQLAlchemy types in new revisions."""
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        render_item=_render_item,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_offline() -> None:
    context.configure(
        url=_url(),
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get(CONNECTION_ATTRIBUTE)
    if connection is not None:
        _run(connection)
        return
    if config.config_file_name is not None:
        fileConfig(config.config_file_name)
    engine = make_engine(_url())
    try:
        with engine.connect() as connection:
            if connection.dialect.name == "sqlite":
                # As ichnode.db.migrate does: a batch migration's table copy must not cascade.
                connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
                connection.commit()  # ends the autobegun transaction: alembic begins its own
            _run(connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
