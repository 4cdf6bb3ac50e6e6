"""Database fixtures on real SQLite files and a real PostgreSQL server.

Import the fixtures you use into a test module (``from db_fixtures import db_url``), or
register this module once in the root conftest (``pytest_plugins = ["db_fixtures"]``).

- ``sqlite_url`` / ``postgres_url``: an *empty* database (no schema), for migration tests;
  ``empty_db_url`` is either, parametrised over both backends.
- ``db_url``: a database at head, on SQLite; on both backends for a test (or module) marked
  ``every_backend``, where the databases behave differently (claims, locks, SQL dialects).
  ``engine`` and ``session_factory`` build on it.

The schema is migrated once per session into a template (:func:`sqlite_template`,
:func:`postgres_template`); each test's database is a copy of it (a file copy on SQLite,
``CREATE DATABASE ... TEMPLATE`` on PostgreSQL), so Alembic runs once, not once per test.
Each PostgreSQL test gets its own database (``ichnode_test_<uuid8>``), created through the
server's ``test`` database and dropped afterwards (``WITH (FORCE)`` ends leftover sessions).
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, insert, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from ichnode.db import Instance, Series, Study, make_engine, make_sessionmaker, upgrade, utcnow
from ichnode.db.queue import Completion, claim, complete_many
from ichnode.subtypes import SUBTYPES

#: Maintenance database through which test databases are created and dropped.
POSTGRES_ADMIN_URL = os.environ.get(
    "ICHNODE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"


def new_uid() -> str:
    """A fresh DICOM UID (``2.25.<uuid as integer>``, PS3.5 B.2)."""
    return f"2.25.{uuid.uuid4().int}"


def _admin_engine() -> Engine:
    return create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")


def create_postgres_database(template: str | None = None) -> str:
    """Create a database on the test server (empty, or a copy of the ``template`` database);
    returns its URL."""
    name = f"ichnode_test_{uuid.uuid4().hex[:8]}"
    copy = f' TEMPLATE "{template}"' if template else ""
    admin = _admin_engine()
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"{copy}'))
    finally:
        admin.dispose()
    return admin.url.set(database=name).render_as_string(hide_password=False)


def drop_postgres_database(url: str) -> None:
    """Drop a test database, ending any session still connected to it."""
    name = make_url(url).database
    admin = _admin_engine()
    try:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """URL of an empty SQLite file database (the file does not exist yet)."""
    return f"sqlite:///{tmp_path / 'db' / 'ichnode.db'}"


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """URL of a fresh, empty PostgreSQL database, dropped after the test."""
    url = create_postgres_database()
    try:
        yield url
    finally:
        drop_postgres_database(url)


BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
#: Marks a test (or a module) whose ``db_url`` must be tried on PostgreSQL too.
EVERY_BACKEND = "every_backend"


@pytest.fixture(params=BACKENDS)
def empty_db_url(request: pytest.FixtureRequest) -> str:
    """An empty database (no schema) on each backend."""
    return request.getfixturevalue(f"{request.param}_url")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """``db_url`` on SQLite, or on both backends where the test is marked ``every_backend``
    (a test that parametrises ``db_url`` itself keeps its own)."""
    if "db_url" not in metafunc.fixturenames:
        return
    for mark in metafunc.definition.iter_markers("parametrize"):
        names = mark.args[0]
        if "db_url" in (names.replace(" ", "").split(",") if isinstance(names, str) else names):
            return
    every = metafunc.definition.get_closest_marker(EVERY_BACKEND) is not None
    metafunc.parametrize("db_url", BACKENDS if every else ["sqlite"], indirect=True)


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file migrated to head, once per session (copied for each test)."""
    path = tmp_path_factory.mktemp("template") / "ichnode.db"
    upgrade(f"sqlite:///{path}")  # its engine is disposed: the file is complete on disk
    return path


@pytest.fixture(scope="session")
def postgres_template() -> Iterator[str]:
    """The name of a PostgreSQL database migrated to head, once per session."""
    url = create_postgres_database()
    try:
        upgrade(url)
        yield str(make_url(url).database)
    finally:
        drop_postgres_database(url)


@pytest.fixture
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database upgraded to head: SQLite unless parametrised (see ``every_backend``)."""
    backend = getattr(request, "param", "sqlite")
    if backend == "sqlite":
        path = tmp_path / "db" / "ichnode.db"
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(request.getfixturevalue("sqlite_template"), path)
        yield f"sqlite:///{path}"
        return
    url = create_postgres_database(template=request.getfixturevalue("postgres_template"))
    try:
        yield url
    finally:
        drop_postgres_database(url)


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    """The test's engine on ``db_url`` (disposed after the test)."""
    engine = make_engine(db_url)
    try:
        yield engine
    finally:
        engine.dispose()


@pytest.fixture
def session_factory(engine: Engine) -> sessionmaker[Session]:
    return make_sessionmaker(engine)


def add_instances(
    session: Session,
    n: int,
    *,
    received_at: datetime | None = None,
    step: timedelta = timedelta(milliseconds=1),
    **columns: Any,
) -> list[int]:
    """Add one study and series holding ``n`` QUEUED instances; returns their ids.

    Instance ``i`` is received at ``received_at + i * step`` (oldest first).
    """
    start = received_at or utcnow()
    study = Study(study_instance_uid=new_uid(), calling_ae="TESTSCU")
    series = Series(study=study, series_instance_uid=new_uid(), modality="CT")
    session.add_all([study, series])
    session.flush()
    rows = [
        {
            "study_id": study.id,
            "series_id": series.id,
            "sop_instance_uid": new_uid(),
            "sop_class_uid": CT_IMAGE_STORAGE,
            "transfer_syntax_uid": EXPLICIT_VR_LITTLE_ENDIAN,
            "path": f"{i:05d}.dcm",
            "size_bytes": 525_000,
            "instance_number": i + 1,
            "z": float(i),
            "received_at": start + i * step,
        }
        | columns
        for i in range(n)
    ]
    return list(
        session.scalars(insert(Instance).returning(Instance.id, sort_by_parameter_order=True), rows)
    )


TEST_MODEL_ID = "0" * 64
#: How long a concurrent claimer waits for the others to be ready.
BARRIER_TIMEOUT_S = 60.0


def fake_probabilities(instance_id: int) -> list[float]:
    """A model output row that depends on the instance id (to check it lands on its row)."""
    return [((instance_id * (k + 3)) % 101) / 100.0 for k in range(len(SUBTYPES))]


def drain_queue(
    session_factory: sessionmaker[Session],
    worker_id: str,
    batch: int,
    barrier: Any | None = None,
    lease_seconds: float = 300.0,
) -> list[int]:
    """Claim and complete batches until nothing is claimable; returns the ids it completed.

    Raises AssertionError if a completion of its own claim is refused.
    """
    if barrier is not None:
        barrier.wait(BARRIER_TIMEOUT_S)
    completed: list[int] = []
    while True:
        with session_factory.begin() as session:
            items = [
                Completion(inst.id, inst.claim_token, TEST_MODEL_ID, fake_probabilities(inst.id))
                for inst in claim(session, worker_id, batch, lease_seconds)
            ]
        if not items:
            return completed
        with session_factory.begin() as session:
            done = complete_many(session, items)
        ids = [item.instance_id for item in items]
        assert done == set(ids), f"{worker_id}: completions refused for {set(ids) - done}"
        completed.extend(ids)


def drain_queue_process(
    url: str, worker_id: str, batch: int, barrier: Barrier, results: Any
) -> None:
    """Entry point of a spawned claimer process: drain the queue, report (worker, ids, error)."""
    engine = make_engine(url)
    try:
        ids = drain_queue(make_sessionmaker(engine), worker_id, batch, barrier)
        results.put((worker_id, ids, None))
    except BaseException as exc:  # report everything: the parent asserts on it
        results.put((worker_id, [], repr(exc)))
    finally:
        engine.dispose()
