"""Shared fixtures: database backends (db_fixtures), the model, in-process nodes and receivers.

- ``node_factory``: a whole node (SCP, workers with the demo model, monitor, reporter, outbox)
  for tests of what happens after a slice arrives.
- ``scp_factory``: only the receiving part (the SCP over the test's database and store): no
  model loaded, no worker, monitor, reporter or outbox thread, for tests of what the receiver
  answers, stores and records.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from ichnode.config import Settings
from ichnode.model import demo_model_path
from ichnode.node.scp import StorageSCP
from ichnode.store import Store

pytest_plugins = ["db_fixtures", "web_fixtures", "training_fixtures"]


@pytest.fixture(scope="session")
def model_path() -> Path:
    """The shipped demo checkpoint: the real model the node serves by default."""
    path = demo_model_path()
    assert path.is_file(), "the demo model ichnode/models/demo.safetensors is missing"
    return path


def _settings(tmp_path: Path, db_url: str, overrides: dict[str, object]) -> Settings:
    from helpers import free_port

    values: dict[str, object] = {
        "db_url": db_url,
        "store": tmp_path / "store",
        "port": free_port(),
        "stable_seconds": 0.5,
        "model": demo_model_path(),
        "device": "cpu",
        "min_free_bytes": 0,
        "workers": 1,
        # Scoring in worker threads of the test's process: the same Worker loop that serve's
        # inference process runs, without spawning a process (a torch import and a model load,
        # seconds each) for every node. The process itself is tested where it is the subject:
        # tests/node/test_inference_process.py, test_receivers.py and the system tests of serve.
        "inference_process": False,
    }
    return Settings(**(values | overrides))


@pytest.fixture
def node_factory(tmp_path: Path, db_url: str) -> Iterator[Callable[..., object]]:
    """Start in-process nodes on a free port with the test's database and store."""
    from ichnode.node.server import Node

    nodes: list[Node] = []

    def start(receiving: int = 1, **overrides: object) -> Node:
        """A started node; ``receiving``: processes receiving on its port, itself included
        (what serve's ``receivers`` setting gives)."""
        node = Node(_settings(tmp_path, db_url, overrides))
        nodes.append(node)
        node.start(receiving=receiving)
        return node

    yield start
    for node in nodes:
        node.stop()


@dataclass
class Receiver:
    """The receiving part of a node: its settings, store, database and listening SCP."""

    settings: Settings
    store: Store
    engine: Engine
    sessions: sessionmaker[Session]
    scp: StorageSCP

    def stop(self) -> None:
        self.scp.shutdown()
        self.engine.dispose()


@pytest.fixture
def scp_factory(tmp_path: Path, db_url: str) -> Iterator[Callable[..., Receiver]]:
    """Start in-process receivers (the SCP alone) on a free port with the test's database
    and store: what :class:`~ichnode.node.server.Node` starts, less the model and threads."""
    from ichnode.db.session import open_database
    from ichnode.node.tls import ReloadingContext

    receivers: list[Receiver] = []

    def start(**overrides: object) -> Receiver:
        s = _settings(tmp_path, db_url, overrides)
        store = Store(s.store, s.min_free_bytes)
        engine, sessions = open_database(s)
        receiver = Receiver(s, store, engine, sessions, StorageSCP(s, store, sessions))
        receivers.append(receiver)
        receiver.scp.start(ReloadingContext(s.tls) if s.tls.enabled else None)
        return receiver

    yield start
    for receiver in receivers:
        receiver.stop()
