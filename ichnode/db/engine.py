"""Engine and session setup for SQLite and PostgreSQL.

Create **one engine per process** (at start-up, from the settings' ``db_url``) and share it
between threads; every thread or task takes its own ``Session`` from :func:`make_sessionmaker`.
Never create an engine per call or per C-STORE: an engine is a connection pool. A process that
forks must call ``engine.dispose(close=False)`` in the child before using it; spawned processes
(``ichnode worker``) create their own.

SQLite: WAL journal (readers do not block the writer), ``synchronous=FULL`` (a committed row
survives power loss: the node answers C-STORE Success only after the commit), a 30 s busy
timeout (writers queue instead of failing), foreign keys enforced. The pysqlite driver's own
transaction handling is kept: it opens a transaction at the first INSERT/UPDATE/DELETE, so a
write transaction takes the write lock at that statement, where the busy timeout applies.

PostgreSQL: psycopg 3 with ``pool_pre_ping`` (connections survive a server restart).
"""

from __future__ import annotations

import logging
import sqlite3
import time
from pathlib import Path
from typing import Any, cast

from sqlalchemy import CursorResult, Engine, Result, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.orm import Session, sessionmaker

from ichnode.errors import ConfigError

log = logging.getLogger(__name__)

#: How long a SQLite writer waits for the lock before failing.
SQLITE_BUSY_TIMEOUT_S = 30.0
#: Pragmas set on every SQLite connection.
SQLITE_PRAGMAS: tuple[tuple[str, str], ...] = (
    ("journal_mode", "WAL"),
    ("synchronous", "FULL"),
    ("busy_timeout", str(int(SQLITE_BUSY_TIMEOUT_S * 1000))),
    ("foreign_keys", "ON"),
)
POSTGRES_DRIVER = "postgresql+psycopg"


def parse_url(url: str | URL) -> URL:
    """Parse and normalise a database URL (plain ``postgresql://`` means psycopg 3)."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise ConfigError(f"invalid database URL: {exc}") from None
    backend = parsed.get_backend_name()
    if backend == "postgresql" and parsed.drivername == "postgresql":
        parsed = parsed.set(drivername=POSTGRES_DRIVER)
    elif backend not in ("sqlite", "postgresql"):
        raise ConfigError(f"unsupported database {backend!r}; use sqlite:/// or postgresql://")
    return parsed


def make_engine(url: str | URL, **kwargs: Any) -> Engine:
    """The process's engine for ``url`` (``sqlite:///PATH`` or ``postgresql+psycopg://...``).

    For a SQLite file, its folder is created. ``kwargs`` go to ``create_engine``.
    """
    parsed = parse_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(parsed, **kwargs)
    kwargs.setdefault("pool_pre_ping", True)
    return create_engine(parsed, **kwargs)


def sqlite_file(url: str | URL) -> Path | None:
    """The file of a ``sqlite:///PATH`` URL; None for other backends, memory or URI forms."""
    parsed = parse_url(url)
    database = parsed.database or ""
    if parsed.get_backend_name() != "sqlite" or database in ("", ":memory:"):
        return None
    return None if database.startswith("file:") else Path(database).expanduser()


def _sqlite_engine(url: URL, **kwargs: Any) -> Engine:
    path = sqlite_file(url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    connect_args = dict(kwargs.pop("connect_args", {}))
    connect_args.setdefault("check_same_thread", False)
    connect_args.setdefault("timeout", SQLITE_BUSY_TIMEOUT_S)
    engine = create_engine(url, connect_args=connect_args, **kwargs)
    event.listen(engine, "connect", _set_sqlite_pragmas)
    return engine


def _set_sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        # busy_timeout first, so the pragmas after it wait for locks too.
        for name, value in sorted(SQLITE_PRAGMAS, key=lambda p: p[0] != "busy_timeout"):
            if name == "journal_mode":
                _set_journal_mode(cursor, value)
            else:
                cursor.execute(f"PRAGMA {name}={value}")
    finally:
        cursor.close()


def _set_journal_mode(cursor: Any, mode: str) -> None:
    """Switch to ``mode`` unless the file already is in it (WAL persists in the file).

    Switching needs an exclusive lock, and SQLite answers "database is locked" at once (without
    its busy handler) when another connection holds the file, as when several processes start
    on a new database together; retry then, within the busy timeout.
    """
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_S
    while True:
        try:
            if str(cursor.execute("PRAGMA journal_mode").fetchone()[0]).upper() == mode.upper():
                return
            cursor.execute(f"PRAGMA journal_mode={mode}")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def error_reason(exc: BaseException) -> str:
    """The first line of the driver's message of a database error (for one log line)."""
    return str(getattr(exc, "orig", None) or exc).splitlines()[0]


def rowcount(result: Result[Any]) -> int:
    """Rows an UPDATE or DELETE changed (``session.execute`` returns a cursor result for
    them, typed as the general ``Result``)."""
    return cast(CursorResult[Any], result).rowcount


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    """Sessions whose objects stay readable after commit (``expire_on_commit=False``)."""
    return sessionmaker(engine, expire_on_commit=False)


def is_postgresql(bind: Engine | Session | Any) -> bool:
    """Whether ``bind`` (an engine, connection or session) talks to PostgreSQL."""
    if isinstance(bind, Session):
        bind = bind.get_bind()
    return bind.dialect.name == "postgresql"
