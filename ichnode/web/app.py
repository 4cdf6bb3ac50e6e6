"""The FastAPI application: read-only JSON, slice images, health, metrics and the pages."""

from __future__ import annotations

import hmac
import logging
import os
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlencode

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from sqlalchemy import func, select, text
from sqlalchemy.exc import SQLAlchemyError

from ichnode import __version__
from ichnode.db import context
from ichnode.db.models import Instance, InstanceStatus
from ichnode.errors import IchnodeError
from ichnode.imaging import WINDOWS, Window
from ichnode.store import valid_uid
from ichnode.subtypes import ANY, DISPLAY_NAMES, SUBTYPES
from ichnode.web import metrics, queries
from ichnode.web.context import WebContext
from ichnode.web.render import SaliencyModel, orientation, render_png
from ichnode.web.schemas import Health, NodeInfo, Orientation, StudyDetail, StudyList

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
#: Cookie that carries the token for the pages (set by ``?token=``).
TOKEN_COOKIE = "ichnode_token"
TOKEN_QUERY = "token"
#: Paths served without the token.
PUBLIC_PATHS = frozenset({"/healthz"})
#: How often the worklist page re-fetches the list.
REFRESH_SECONDS = 5.0
MAX_LIMIT = 500
MAX_OFFSET = 1_000_000
IMAGE_MAX_AGE = 300

WindowName = Literal[tuple(WINDOWS)]  # type: ignore[valid-type]
Subtype = Literal[SUBTYPES]  # type: ignore[valid-type]
UID_PATH = PathParam(max_length=64, description="A DICOM UID.")

_NOT_FOUND = {404: {"description": "No such study or instance."}}
_UNAUTHORIZED = {401: {"description": "http.token is set and the request did not carry it."}}
_IDENTIFIERS_HIDDEN = {
    400: {"description": "A search by accession number while patient identifiers are hidden."}
}


#: RFC 3339 date-time (the offset may be left out: UTC).
_DATE_TIME = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,6})?([Zz]|[+-]\d{2}:\d{2})?$"
)


def _since(value: str | None) -> datetime | None:
    """``since`` as an aware UTC datetime; 422 unless it is an RFC 3339 date-time."""
    if value is None:
        return None
    try:
        if not _DATE_TIME.match(value):
            raise ValueError(value)
        parsed = datetime.fromisoformat(value.replace("z", "Z"))
        if parsed.tzinfo is None:
            return parsed.replace(tzinfo=timezone.utc)
        return parsed.astimezone(timezone.utc)
    except (OverflowError, ValueError):
        error = {
            "type": "datetime_parsing",
            "loc": ("query", "since"),
            "msg": "expected an RFC 3339 date-time",
            "input": value,
        }
        raise RequestValidationError([error]) from None


def _token_ok(presented: str | None, token: str) -> bool:
    return presented is not None and hmac.compare_digest(presented.encode(), token.encode())


def _install_auth(app: FastAPI, token: str) -> None:
    """Every path but /healthz needs ``Authorization: Bearer`` or the cookie ``?token=`` set."""

    @app.middleware("http")
    async def require_token(request: Request, call_next: Any) -> Response:
        if request.url.path in PUBLIC_PATHS:
            return await call_next(request)
        query_token = request.query_params.get(TOKEN_QUERY)
        if query_token is not None:
            if not _token_ok(query_token, token):
                return _unauthorized()
            rest = [(k, v) for k, v in request.query_params.multi_items() if k != TOKEN_QUERY]
            target = request.url.path + (f"?{urlencode(rest)}" if rest else "")
            response = RedirectResponse(target, status_code=303)
            response.set_cookie(
                TOKEN_COOKIE,
                token,
                httponly=True,
                samesite="strict",
                secure=request.url.scheme == "https",
            )
            return response
        header = request.headers.get("authorization", "")
        scheme, _, value = header.partition(" ")
        bearer = value.strip() if scheme.lower() == "bearer" else None
        if _token_ok(bearer, token) or _token_ok(request.cookies.get(TOKEN_COOKIE), token):
            return await call_next(request)
        return _unauthorized()


def _unauthorized() -> Response:
    return JSONResponse(
        {"detail": "missing or wrong token: send 'Authorization: Bearer <token>' or open ?token="},
        status_code=401,
        headers={"WWW-Authenticate": "Bearer"},
    )


def _with_security(app: FastAPI) -> None:
    """Publish the bearer scheme in /openapi.json (enforced by the middleware)."""
    original = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = original()
            schema.setdefault("components", {})["securitySchemes"] = {
                "bearer": {"type": "http", "scheme": "bearer"}
            }
            for path, item in schema["paths"].items():
                if path not in PUBLIC_PATHS:
                    for op in item.values():
                        op["security"] = [{"bearer": []}]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def create_app(node_or_context: Any) -> FastAPI:
    """The HTTP API and pages over a started node (or a :class:`WebContext`)."""
    ctx = WebContext.from_node(node_or_context)
    saliency = SaliencyModel(ctx.predictor)
    show = ctx.show_patient_identifiers
    app = FastAPI(
        title="ichnode",
        summary="Intracranial hemorrhage triage results (read-only). Not for diagnosis.",
        version="1",
        docs_url=None,  # the Swagger page loads from a CDN; ichnode works offline
        redoc_url=None,
    )
    app.state.context = ctx
    if ctx.token:
        _install_auth(app, ctx.token)
    _with_security(app)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get(
        "/api/studies", response_model=StudyList, responses=_UNAUTHORIZED | _IDENTIFIERS_HIDDEN
    )
    def list_studies(
        flagged: bool | None = None,
        since: Annotated[
            str | None,
            Query(
                description="Received at or after this RFC 3339 time (UTC when no offset).",
                json_schema_extra={"format": "date-time"},
            ),
        ] = None,
        status: queries.WorklistState | None = None,
        accession: Annotated[
            str | None,
            Query(max_length=64, description="Only studies with this accession number."),
        ] = None,
        order: queries.Order = queries.Order.TRIAGE,
        limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 50,
        offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
    ) -> dict[str, Any]:
        """Studies in triage order (flagged first, then ``any`` descending, newest first)."""
        if accession is not None and not show:
            # Hidden identifiers are not searchable either: that would tell them apart.
            raise HTTPException(400, "accession search is off while identifiers are hidden")
        with ctx.sessions() as session:
            total, studies = queries.worklist(
                session,
                flagged=flagged,
                since=_since(since),
                state=status,
                accession=accession,
                order=order,
                limit=limit,
                offset=offset,
                show_patient_identifiers=show,
            )
        return {
            "total": total,
            "limit": limit,
            "offset": offset,
            "order": order,
            "studies": studies,
        }

    @app.get(
        "/api/studies/{study_uid}",
        response_model=StudyDetail,
        responses=_NOT_FOUND | _UNAUTHORIZED,
    )
    def get_study(study_uid: Annotated[str, UID_PATH]) -> dict[str, Any]:
        """One study: series, instances ordered by z, result versions, deliveries."""
        if not valid_uid(study_uid):
            raise HTTPException(404, "no such study")
        with ctx.sessions() as session:
            out = queries.detail(session, study_uid, show_patient_identifiers=show)
        if out is None:
            raise HTTPException(404, "no such study")
        return out

    @app.get(
        "/api/instances/{sop_uid}/image.png",
        response_class=Response,
        responses={
            200: {"content": {"image/png": {}}, "description": "The slice as PNG."},
            503: {"description": "Saliency asked for but no model is loaded."},
        }
        | _NOT_FOUND
        | _UNAUTHORIZED,
    )
    def instance_image(
        sop_uid: Annotated[str, UID_PATH],
        window: WindowName = "brain",
        center: Annotated[
            float | None,
            Query(
                ge=-2000, le=5000, description="Window centre in HU (overrides the named one's)."
            ),
        ] = None,
        width: Annotated[
            float | None,
            Query(ge=1, le=10000, description="Window width in HU (overrides the named one's)."),
        ] = None,
        overlay: Literal["none", "saliency"] = "none",
        subtype: Subtype = ANY,
        size: Annotated[int | None, Query(ge=32, le=1024, description="Side in pixels.")] = None,
        letters: Annotated[
            bool, Query(description="Burn the orientation letters in (images of 192 px on).")
        ] = True,
    ) -> Response:
        """A stored slice rendered in a named window, or a free one (``center`` and ``width``
        override the named window's), optionally with the Grad-CAM heat map."""
        named = WINDOWS[window]
        shown = Window(
            "free",
            named.center if center is None else center,
            named.width if width is None else width,
        )
        instance_id, path = _instance(sop_uid)
        if overlay == "saliency" and not saliency.available:
            raise HTTPException(503, "no model loaded: saliency is not available")
        neighbours: list[str | None] = []
        if overlay == "saliency" and saliency.context:  # a 2.5-D model reads the neighbours
            with ctx.sessions() as session:
                planes = context.planes(session, [instance_id], saliency.context)[instance_id]
            neighbours = [
                None if p is None else str(ctx.store.path(p)) for p in planes.neighbour_paths
            ]
        try:
            png = render_png(
                path,
                shown,
                size,
                saliency if overlay == "saliency" else None,
                subtype,
                letters,
                neighbours,
            )
        except (IchnodeError, ValueError, OSError) as exc:
            log.info("instance image not rendered: %s", type(exc).__name__)
            raise HTTPException(404, "the stored object has no renderable image") from None
        return Response(
            png,
            media_type="image/png",
            headers={"Cache-Control": f"private, max-age={IMAGE_MAX_AGE}"},
        )

    @app.get(
        "/api/instances/{sop_uid}/orientation",
        response_model=Orientation,
        responses=_NOT_FOUND | _UNAUTHORIZED,
    )
    def instance_orientation(sop_uid: Annotated[str, UID_PATH]) -> dict[str, str]:
        """The patient directions at the edges of a stored slice (R, L, A, P, H, F)."""
        _, path = _instance(sop_uid)
        try:
            return orientation(path)
        except (IchnodeError, ValueError, OSError) as exc:
            log.info("instance orientation not read: %s", type(exc).__name__)
            raise HTTPException(404, "the stored object is not a readable DICOM file") from None

    def _instance(sop_uid: str) -> tuple[int, str]:
        """An instance's id and its stored file, or 404."""
        if not valid_uid(sop_uid):
            raise HTTPException(404, "no such instance")
        with ctx.sessions() as session:
            row = session.execute(
                select(Instance.id, Instance.path).where(Instance.sop_instance_uid == sop_uid)
            ).first()
        if row is None or row.path is None:
            raise HTTPException(404, "no such instance, or nothing stored for it")
        return row.id, str(ctx.store.path(row.path))

    @app.get("/api/info", response_model=NodeInfo, responses=_UNAUTHORIZED)
    def info() -> dict[str, Any]:
        """The ichnode version, and the labels, windows and thresholds the pages draw with."""
        ckpt = ctx.predictor.checkpoint if ctx.predictor else None
        return {
            "version": __version__,
            "subtypes": list(SUBTYPES),
            "display_names": dict(DISPLAY_NAMES),
            "windows": list(WINDOWS),
            "thresholds": ckpt.decision_thresholds if ckpt else None,
            "model_id": ctx.predictor.model_id if ctx.predictor else None,
            "show_patient_identifiers": show,
            "refresh_seconds": REFRESH_SECONDS,
        }

    @app.get(
        "/healthz",
        response_model=Health,
        responses={503: {"description": "A check failed.", "model": Health}},
    )
    def healthz() -> JSONResponse:
        """Database and store reachable, in-process threads alive; 200, else 503."""
        body = health(ctx)
        code = 200 if body["status"] == "ok" else 503
        return JSONResponse(Health.model_validate(body).model_dump(), status_code=code)

    @app.get(
        "/metrics",
        response_class=Response,
        responses={200: {"content": {metrics.CONTENT_TYPE: {}}}} | _UNAUTHORIZED,
    )
    def get_metrics() -> Response:
        """Prometheus text format, computed from the database."""
        return Response(metrics.render_metrics(ctx), media_type=metrics.CONTENT_TYPE)

    @app.get("/", include_in_schema=False)
    def worklist_page() -> FileResponse:
        return FileResponse(STATIC / "worklist.html", headers={"Cache-Control": "no-cache"})

    @app.get("/studies/{study_uid}", include_in_schema=False)
    def study_page(study_uid: str) -> FileResponse:
        return FileResponse(STATIC / "study.html", headers={"Cache-Control": "no-cache"})

    return app


def health(ctx: WebContext) -> dict[str, Any]:
    """The health checks (see ``/healthz``)."""
    database, depth = {"ok": True, "detail": None}, None
    try:
        with ctx.sessions() as session:
            session.execute(text("SELECT 1"))
            depth = session.scalar(
                select(func.count())
                .select_from(Instance)
                .where(Instance.status.in_([InstanceStatus.QUEUED, InstanceStatus.CLAIMED]))
            )
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
