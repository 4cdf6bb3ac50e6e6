"""The optional bearer token: every path but ``/healthz`` needs it when ``http.token`` is set.

A client sends ``Authorization: Bearer <token>``; a browser opens any page once with
``?token=<token>``, which sets an HTTP-only cookie and redirects to the same URL without it.
"""

from __future__ import annotations

import hmac
from typing import Any
from urllib.parse import urlencode

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response

#: Cookie that carries the token for the pages (set by ``?token=``).
TOKEN_COOKIE = "ichnode_token"
TOKEN_QUERY = "token"
#: Paths served without the token.
PUBLIC_PATHS = frozenset({"/healthz"})


def _token_ok(presented: str | None, token: str) -> bool:
    return presented is not None and hmac.compare_digest(presented.encode(), token.encode())


def install_auth(app: FastAPI, token: str) -> None:
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


def publish_security(app: FastAPI) -> None:
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
