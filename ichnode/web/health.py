"""``/healthz`` (database, store, threads) and ``/metrics`` (Prometheus, from the database)."""

from __future__ import annotations

import os
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from sqlalchemy.exc import SQLAlchemyError

from ichnode.db import metrics as counts
from ichnode.web import metrics
from ichnode.web.context import Context, WebContext
from ichnode.web.responses import UNAUTHORIZED, Responses
from ichnode.web.schemas import Health

router = APIRouter()


@router.get(
    "/healthz",
    response_model=Health,
    responses={503: {"description": "A check failed.", "model": Health}},
)
def healthz(ctx: Context) -> JSONResponse:
    """Database and store reachable, in-process threads alive; 200, else 503."""
    body = health(ctx)
    code = 200 if body["status"] == "ok" else 503
    return JSONResponse(Health.model_validate(body).model_dump(), status_code=code)


METRICS_RESPONSES: Responses = {200: {"content": {metrics.CONTENT_TYPE: {}}}}


@router.get("/metrics", response_class=Response, responses=METRICS_RESPONSES | UNAUTHORIZED)
def get_metrics(ctx: Context) -> Response:
    """Prometheus text format, computed from the database."""
    return Response(metrics.render_metrics(ctx), media_type=metrics.CONTENT_TYPE)


def health(ctx: WebContext) -> dict[str, Any]:
    """The health checks (see ``/healthz``)."""
    database: dict[str, Any] = {"ok": True, "detail": None}
    depth = None
    try:
        with ctx.sessions() as session:
            counts.ping(session)
            depth = counts.waiting(session)
    except SQLAlchemyError as exc:
        database = {"ok": False, "detail": f"database unreachable ({type(exc).__name__})"}
    root = ctx.store.root
    store_ok = root.is_dir() and os.access(root, os.R_OK | os.W_OK | os.X_OK)
    store = {"ok": store_ok, "detail": None if store_ok else "store folder missing or not writable"}
    threads = {t.name: t.is_alive() for t in ctx.threads}
    dead = sorted(name for name, alive in threads.items() if not alive)
    workers = {"ok": not dead, "detail": f"stopped: {', '.join(dead)}" if dead else None}
    ok = database["ok"] and store["ok"] and workers["ok"]
    return {
        "status": "ok" if ok else "unavailable",
        "database": database,
        "store": store,
        "workers": workers,
        "threads": threads,
        "queue_depth": depth,
    }
