"""What the web layer reads: the database, the store, the model, the node's threads."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import sessionmaker

from ichnode.inference import Predictor
from ichnode.store import Store

#: ``settings.http.show_patient_identifiers`` when the settings do not have the field (yet).


@dataclass
class WebContext:
    """The parts of a node the HTTP layer needs; build one with :meth:`from_node`.

    ``predictor`` may be None (no saliency then); ``threads`` are the node's in-process ones
    (workers, monitor, outbox...: the health check's liveness).
    """

    sessions: sessionmaker
    store: Store
    settings: Any
    predictor: Predictor | None = None
    threads: list[threading.Thread] = field(default_factory=list)

    @classmethod
    def from_node(cls, node: Any) -> WebContext:
        """The context of a started :class:`ichnode.node.server.Node` (or anything shaped so)."""
        if isinstance(node, WebContext):
            return node
        for name in ("sessions", "store", "settings"):
            if not hasattr(node, name):
                raise TypeError(f"create_app needs a started node: it has no {name!r}")
        return cls(
            sessions=node.sessions,
            store=node.store,
            settings=node.settings,
            predictor=getattr(node, "predictor", None),
            threads=list(getattr(node, "threads", [])),
        )

    @property
    def show_patient_identifiers(self) -> bool:
        return self.settings.http.show_patient_identifiers

    @property
    def token(self) -> str | None:
        return self.settings.http.token or None
