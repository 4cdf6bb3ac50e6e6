"""The HTTP API and the worklist page (FastAPI, served by uvicorn in a background thread).

``create_app(node_or_context)`` builds the application over a running node (or a
:class:`WebContext`); ``start_http(settings, context)`` serves it on ``settings.http.bind``.
Everything is read-only: the database and the store are the record, the API only shows them.
"""

from ichnode.node.preflight import check_http_settings
from ichnode.web.app import create_app
from ichnode.web.context import WebContext
from ichnode.web.http import HTTPHandle, start_http

__all__ = ["HTTPHandle", "WebContext", "check_http_settings", "create_app", "start_http"]
