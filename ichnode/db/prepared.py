"""Statements compiled once and run on the driver's cursor: the C-STORE path's SQL, lean.

Each received instance runs four or five small statements (``db/ingest.py``). Through a
``Session`` and ``Connection.execute`` SQLAlchemy spends more Python on each of them than SQLite
spends running it: the session's transaction bookkeeping, the compiled-cache lookup, an
execution context and a result object per statement -- about 0.35 ms an instance on the 2-core
build machine, measured against the same statements on the DBAPI cursor (docs/performance.md).
Here the Core statement is still the one source of the SQL: :class:`Prepared` compiles it once
for the database's dialect and keeps, per bind parameter, SQLAlchemy's own bind processor
(enums to their values, :class:`~ichnode.db.models.UTCDateTime` to UTC, SQLite's datetime
text) and the literal or column default it stands for; :class:`Writer` runs prepared
statements on one pooled DBAPI connection, and turns a driver error into SQLAlchemy's exception
(``IntegrityError``, ``OperationalError``), invalidating a connection the database dropped, as
``Connection.execute`` would. Callers own the transaction (:meth:`Writer.commit`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, cast

from sqlalchemy import Engine
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import PoolProxiedConnection
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.schema import ScalarElementColumnDefault

Processor = Callable[[Any], Any] | None
#: A bind parameter with no value of its own: the caller must give one.
_REQUIRED = object()


class Prepared:
    """One Core statement compiled for ``dialect``; ``keys``: the columns an INSERT is given
    (the others take their scalar defaults, as SQLAlchemy would fill them in)."""

    def __init__(
        self, statement: ClauseElement, dialect: Dialect, keys: Sequence[str] | None = None
    ) -> None:
        compiled = cast(
            SQLCompiler,
            statement.compile(dialect=dialect, column_keys=list(keys) if keys else None),
        )
        self.sql = compiled.string
        self.positional = compiled.positional
        defaults: dict[str, Any] = {}
        for column in compiled.insert_prefetch:
            default = column.default
            if not isinstance(default, ScalarElementColumnDefault):
                raise ValueError(f"{column.name}: only scalar column defaults can be prepared")
            defaults[column.key] = default.arg
        names = (
            list(compiled.positiontup or [])
            if compiled.positional
            else list(dict.fromkeys(compiled.bind_names.values()))
        )
        #: Per bind parameter: its name, the value it has unless given (a literal in the
        #: statement or a column default; _REQUIRED: none) and its bind processor.
        self.binds: list[tuple[str, Any, Processor]] = []
        for name in names:
            bind = compiled.binds[name]
            fixed = defaults.get(name, _REQUIRED if bind.required else bind.value)
            processor = bind.type.dialect_impl(dialect).bind_processor(dialect)
            self.binds.append((name, fixed, processor))
        self._names = frozenset(names)

    def parameters(self, values: Mapping[str, Any]) -> Sequence[Any] | dict[str, Any]:
        """The driver's parameters for ``values`` (by bind name), processed as SQLAlchemy
        would bind them: a sequence for positional paramstyles, else a dict. A value the
        statement has no parameter for is an error, not dropped (an INSERT's ``keys``)."""
        unknown = values.keys() - self._names
        if unknown:
            raise KeyError(f"the statement has no bind parameter {sorted(unknown)[0]!r}")
        out = []
        for name, fixed, processor in self.binds:
            value = values.get(name, fixed)
            if value is _REQUIRED:
                raise KeyError(f"no value for bind parameter {name!r}")
            out.append(processor(value) if processor is not None else value)
        if self.positional:
            return out
        return {name: value for (name, _, _), value in zip(self.binds, out, strict=True)}


class Writer:
    """Prepared statements on one DBAPI connection, in the caller's transaction.

    :meth:`checkout` takes a pooled connection for one unit of work and gives it back
    (whatever was not committed is rolled back by the pool); :meth:`of` runs in a session's
    transaction instead, which the session commits.
    """

    def __init__(self, connection: PoolProxiedConnection, dialect: Dialect) -> None:
        self.connection = connection
        self.dialect = dialect
        self._cursor: Any = None

    @classmethod
    @contextlib.contextmanager
    def checkout(cls, bind: Engine | sessionmaker) -> Iterator[Writer]:
        """A pooled connection of ``bind`` (an engine, or the engine sessions are bound to) for
        one unit of work, pre-pinged where the engine pings; raises SQLAlchemy's exception
        when none can be had."""
        engine = bind.kw.get("bind") if isinstance(bind, sessionmaker) else bind
        if not isinstance(engine, Engine):
            raise TypeError("a Writer needs an engine, or sessions bound to one")
        connection = engine.raw_connection()
        writer = cls(connection, engine.dialect)
        try:
            yield writer
        finally:
            if writer._cursor is not None:
                with contextlib.suppress(Exception):  # a dropped connection's cursor
                    writer._cursor.close()
            connection.close()

    @classmethod
    def of(cls, session: Session) -> Writer:
        """A writer in ``session``'s transaction (on its connection, begun if it was not)."""
        return cls(session.connection().connection, session.get_bind().dialect)

    def execute(self, statement: Prepared, values: Mapping[str, Any] | None = None) -> Any:
        """Run ``statement``; the driver's cursor (fetch from it at once)."""
        parameters = statement.parameters(values or {})
        with self._errors(statement.sql, parameters):
            if self._cursor is None:
                self._cursor = self.connection.cursor()
            self._cursor.execute(statement.sql, parameters)
        return self._cursor

    def commit(self) -> None:
        with self._errors("COMMIT", None):
            self.connection.commit()

    def rollback(self) -> None:
        with self._errors("ROLLBACK", None):
            self.connection.rollback()

    @contextlib.contextmanager
    def _errors(self, sql: str, parameters: Any) -> Iterator[None]:
        """A driver error as SQLAlchemy raises it; a connection the database dropped is
        invalidated, so that the pool does not hand it out again."""
        dbapi = self.dialect.loaded_dbapi
        try:
            yield
        except dbapi.Error as exc:
            raw = self.connection.dbapi_connection
            dropped = self.dialect.is_disconnect(exc, raw, self._cursor)
            if dropped:
                self._cursor = None
                self.connection.invalidate(exc)
            raise DBAPIError.instance(
                sql,
                parameters,
                exc,
                dbapi.Error,
                dialect=self.dialect,
                connection_invalidated=dropped,
            ) from exc
