"""The web tests' data and servers: phantom studies resulted once, the app served over them.

A real node receives the phantoms over DICOM, scores and results them once per session
(:func:`seeded_site`); each test gets its own copy of that database and store (``seeded``)
and serves the web app over it with the session's predictor injected (``web``): no node, no
worker threads, and the same rows every time. Tests that need a node still use
``node_factory`` and :func:`serve`.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from dicom_client import send
from helpers import built_once, free_port, wait_for

from ichnode.config import HTTPSettings, Settings
from ichnode.db import make_engine, make_sessionmaker
from ichnode.db.models import Study, StudyStatus
from ichnode.inference import Predictor
from ichnode.model import demo_model_path
from ichnode.store import Store
from ichnode.web import WebContext, start_http
from ichnode.web.http import HTTPHandle
from phantoms.synth import synth_study

#: Phantoms the demo model scores far apart: a large intraparenchymal bleed (flagged), an
#: epidural one, and a normal head. Sent in this order, so the normal one is the newest.
PHANTOMS = (
    ("iph", 2, ("intraparenchymal",)),
    ("edh", 4, ("epidural",)),
    ("normal", 10, ()),
)
N_SLICES = 8
SIZE = 256
SUCCESS = 0x0000
TOKEN = "s3cret-token"


def send_phantoms(node: Any, phantoms: tuple = PHANTOMS) -> dict[str, str]:
    """Send each phantom study over DICOM; returns ``{name: StudyInstanceUID}``."""
    uids = {}
    for name, seed, subtypes in phantoms:
        slices = synth_study(seed, n_slices=N_SLICES, size=SIZE, subtypes=subtypes)
        datasets = [s.dataset for s in slices]
        assert send(node.settings.port, datasets) == [SUCCESS] * len(datasets)
        uids[name] = str(datasets[0].StudyInstanceUID)
    return uids


def send_with(node: Any, seed: int, **header: str | None) -> str:
    """Send a normal phantom study with ``header`` set (None: removed); its StudyInstanceUID."""
    datasets = [s.dataset for s in synth_study(seed, n_slices=N_SLICES, size=SIZE)]
    for ds in datasets:
        for keyword, value in header.items():
            if value is None:
                if keyword in ds:
                    delattr(ds, keyword)
            else:
                setattr(ds, keyword, value)
    assert send(node.settings.port, datasets) == [SUCCESS] * len(datasets)
    return str(datasets[0].StudyInstanceUID)


def serve(node_or_context: Any, token: str | None = None, **http: object) -> HTTPHandle:
    """Start the web app of a node (or a :class:`WebContext`) on a free loopback port."""
    settings = SimpleNamespace(http=HTTPSettings(bind="127.0.0.1:0", token=token, **http))
    context = dataclasses.replace(WebContext.from_node(node_or_context), settings=settings)
    return start_http(settings, context)


def wait_resulted(client: httpx.Client, n: int, timeout: float = 60.0) -> list[dict]:
    """Poll the API until ``n`` studies are resulted; returns the list in triage order."""

    def ready() -> list[dict] | None:
        studies = client.get("/api/studies").json()["studies"]
        done = [s for s in studies if s["status"] == "resulted"]
        return studies if len(done) == n else None

    return wait_for(ready, timeout=timeout, interval=0.2)


def triage_key(study: dict) -> tuple:
    """The documented sort rule: flagged first, then `any` descending, then newest first."""
    p_any = study["probabilities"]["any"] if study["probabilities"] else -1.0
    return (
        not study["flagged"],
        -p_any,
        -datetime.fromisoformat(study["last_received_at"]).timestamp(),
    )


@dataclass(frozen=True)
class Seeded:
    """A database file and store holding the resulted phantoms, and their UIDs."""

    db: Path
    store: Path
    uids: dict[str, str]


def _seed(folder: Path, template: Path) -> None:
    """Receive, score and result :data:`PHANTOMS` with a real node over ``folder``."""
    from ichnode.node.server import Node

    db = folder / "ichnode.db"
    shutil.copyfile(template, db)
    settings = Settings(db_url=f"sqlite:///{db}", store=folder / "store", port=free_port(),
                        stable_seconds=0.5, model=demo_model_path(), device="cpu",
                        min_free_bytes=0, workers=1)  # fmt: skip
    node = Node(settings)
    node.start()
    try:
        uids = send_phantoms(node)

        def resulted() -> bool:
            with node.sessions() as session:
                states = session.query(Study.status).all()
            return len(states) == len(uids) and all(s == StudyStatus.RESULTED for (s,) in states)

        wait_for(resulted, timeout=120)
    finally:
        node.stop()  # the engine is disposed: the file is complete on disk
    (folder / "uids.json").write_text(json.dumps(uids))


@pytest.fixture(scope="session")
def seeded_site(tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path) -> Seeded:
    """:data:`PHANTOMS` received, scored and resulted by a real node, once per test run (by
    one pytest-xdist worker: :func:`helpers.built_once`); tests copy it, never change it."""
    folder = built_once(tmp_path_factory, "seeded", lambda out: _seed(out, sqlite_template))
    uids = json.loads((folder / "uids.json").read_text())
    return Seeded(folder / "ichnode.db", folder / "store", uids)


@pytest.fixture(scope="session")
def predictor() -> Predictor:
    """The demo model on the CPU, loaded once (what a node serves)."""
    return Predictor(None, "cpu")


@dataclass
class Site:
    """A test's own copy of a database and store, and the context the web app reads."""

    context: WebContext
    uids: dict[str, str]

    @property
    def sessions(self) -> Any:
        return self.context.sessions

    @property
    def store(self) -> Store:
        return self.context.store

    @property
    def predictor(self) -> Predictor | None:
        return self.context.predictor


def _site(db: Path, store: Path, uids: dict[str, str], predictor: Predictor) -> Iterator[Site]:
    engine = make_engine(f"sqlite:///{db}")
    # Full settings: the STOW-RS intake (POST /dicom-web/studies) reads its rules from them.
    settings = Settings(store=store, min_free_bytes=0, http=HTTPSettings(bind="127.0.0.1:0"))
    context = WebContext(make_sessionmaker(engine), Store(store, 0), settings, predictor)
    try:
        yield Site(context, uids)
    finally:
        engine.dispose()


@pytest.fixture
def seeded(tmp_path: Path, seeded_site: Seeded, predictor: Predictor) -> Iterator[Site]:
    """This test's copy of the resulted phantoms (database and store)."""
    (tmp_path / "db").mkdir()
    shutil.copyfile(seeded_site.db, tmp_path / "db" / "ichnode.db")
    shutil.copytree(seeded_site.store, tmp_path / "store")
    yield from _site(tmp_path / "db" / "ichnode.db", tmp_path / "store", seeded_site.uids,
                     predictor)  # fmt: skip


@pytest.fixture
def empty(tmp_path: Path, sqlite_template: Path, predictor: Predictor) -> Iterator[Site]:
    """A database at head with no study, and an empty store."""
    (tmp_path / "db").mkdir()
    shutil.copyfile(sqlite_template, tmp_path / "db" / "ichnode.db")
    (tmp_path / "store").mkdir()
    yield from _site(tmp_path / "db" / "ichnode.db", tmp_path / "store", {}, predictor)


@pytest.fixture
def web() -> Iterator[Callable[..., HTTPHandle]]:
    """``web(site, token=None, **http)``: the app served over a site; stopped afterwards."""
    handles: list[HTTPHandle] = []

    def start(site: Site, token: str | None = None, **http: object) -> HTTPHandle:
        handles.append(serve(site.context, token, **http))
        return handles[-1]

    yield start
    for handle in handles:
        handle.stop()
