"""Shared fixtures: database backends (db_fixtures), the model, an in-process node."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ichnode.config import Settings
from ichnode.model import demo_model_path

pytest_plugins = ["db_fixtures"]


@pytest.fixture(scope="session")
def model_path() -> Path:
    """The shipped demo checkpoint: the real model the node serves by default."""
    path = demo_model_path()
    assert path.is_file(), "the demo model ichnode/models/demo.safetensors is missing"
    return path


@pytest.fixture
def node_factory(tmp_path: Path, db_url: str, model_path: Path) -> Iterator[Callable[..., object]]:
    """Start in-process nodes on a free port with the test's database and store."""
    from helpers import free_port

    from ichnode.node.server import Node

    nodes: list[Node] = []

    def start(**overrides: object) -> Node:
        values: dict[str, object] = {
            "db_url": db_url,
            "store": tmp_path / "store",
            "port": free_port(),
            "stable_seconds": 0.5,
            "model": model_path,
            "device": "cpu",
            "min_free_bytes": 0,
            "workers": 1,
        }
        values.update(overrides)
        node = Node(Settings(**values))
        node.start()
        nodes.append(node)
        return node

    yield start
    for node in nodes:
        node.stop()
