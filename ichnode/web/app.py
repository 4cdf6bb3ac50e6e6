"""The FastAPI application: read-only JSON, slice images, health, metrics and the pages.

:func:`create_app` assembles the routers (``api``, ``images``, ``health`` and the pages
below); each route takes the node's :class:`~ichnode.web.context.WebContext` as a dependency
and reads the database through :mod:`ichnode.db`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import compile_path

from ichnode.web import api, dicomweb, health, images, reviews, wado
from ichnode.web.auth import install_auth, publish_security
from ichnode.web.context import WebContext

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"

pages = APIRouter(include_in_schema=False)


@pages.get("/")
def worklist_page() -> FileResponse:
    return FileResponse(STATIC / "worklist.html", headers={"Cache-Control": "no-cache"})


@pages.get("/studies/{study_uid}")
def study_page(study_uid: str) -> FileResponse:
    return FileResponse(STATIC / "study.html", headers={"Cache-Control": "no-cache"})


def create_app(node_or_context: Any) -> FastAPI:
    """The HTTP API and pages over a started node (or a :class:`WebContext`)."""
    ctx = WebContext.from_node(node_or_context)
    app = FastAPI(
        title="ichnode",
        summary="Intracranial hemorrhage triage results (read-only). Not for diagnosis.",
        version="1",
        docs_url=None,  # the Swagger page loads from a CDN; ichnode works offline
        redoc_url=None,
    )
    app.state.context = ctx
    if ctx.token:
        install_auth(app, ctx.token)
    publish_security(app)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    routers = (
        api.router, reviews.router, dicomweb.router, wado.router, images.router, health.router,
        pages,
    )  # fmt: skip
    for router in routers:
        app.include_router(router)
    app.add_exception_handler(StarletteHTTPException, _allow_every_method)
    return app


async def _allow_every_method(request: Request, exc: Exception) -> Response:
    """FastAPI's answer, with a 405's ``Allow`` naming every documented method of the path.

    Starlette answers 405 from the first route whose path matches, so a path served by two
    routes (``GET`` and ``POST`` of ``/api/studies/{uid}/reviews``) would allow only one.
    """
    response = await http_exception_handler(request, exc)  # type: ignore[arg-type]
    if getattr(exc, "status_code", None) == 405:
        methods: set[str] = set()
        for path, operations in request.app.openapi()["paths"].items():
            pattern, _, _ = compile_path(path)
            if pattern.match(request.url.path):
                methods |= {method.upper() for method in operations}
        if methods:
            response.headers["Allow"] = ", ".join(sorted(methods))
    return response
