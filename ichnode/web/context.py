"""What the web layer reads: the database, the store, the model, the node's threads."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, Request
from sqlalchemy.orm import sessionmaker

from ichnode.inference import Predictor
from ichnode.node.stow import StowReceiver
from ichnode.report.saliency import SaliencyModel
from ichnode.store import Store


@dataclass
class WebContext:
    """The parts of a node the HTTP layer needs; build one with :meth:`from_node`.

    ``predictor`` may be None (no saliency then); ``saliency`` is the node's private Grad-CAM
    copy of the model (made from ``predictor`` when not given); ``threads`` are the node's
    in-process ones (workers, monitor, outbox...: the health check's liveness).
    """

    sessions: sessionmaker
    store: Store
    settings: Any
    predictor: Predictor | None = None
    threads: list[threading.Thread] = field(default_factory=list)
    saliency: SaliencyModel | None = None
    #: The node's STOW-RS intake (made here over the same database and store when not given).
    stow: StowReceiver | None = None

    def __post_init__(self) -> None:
        if self.saliency is None:
            self.saliency = SaliencyModel(self.predictor)
        if self.stow is None and hasattr(self.settings, "selection"):
            self.stow = StowReceiver(self.settings, self.store, self.sessions)

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
            saliency=getattr(node, "saliency", None),
            stow=getattr(node, "stow", None),
        )

    @property
    def show_patient_identifiers(self) -> bool:
        return self.settings.http.show_patient_identifiers

    @property
    def token(self) -> str | None:
        return self.settings.http.token or None


def current(request: Request) -> WebContext:
    """The app's context (a FastAPI dependency)."""
    return request.app.state.context


#: A route's parameter that receives the app's :class:`WebContext`.
Context = Annotated[WebContext, Depends(current)]
