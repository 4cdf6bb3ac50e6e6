"""Serving the app: bind checks and uvicorn in a background thread."""

from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Any

import uvicorn

from ichnode.errors import ConfigError
from ichnode.node.preflight import bind_http
from ichnode.web.app import create_app
from ichnode.web.https import CertificateWatcher

log = logging.getLogger(__name__)

#: Seconds to wait for uvicorn to start serving, and to stop.
START_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0


class HTTPHandle:
    """A running HTTP server; ``stop()`` shuts it down and joins its thread."""

    def __init__(
        self,
        server: uvicorn.Server,
        thread: threading.Thread,
        host: str,
        port: int,
        https: bool = False,
        watcher: CertificateWatcher | None = None,
    ):
        self.server = server
        self.thread = thread
        self.host = host
        self.port = port
        self.https = https
        self.watcher = watcher

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.https else 'http'}://{host}:{self.port}"

    def stop(self) -> None:
        if self.watcher is not None:
            self.watcher.stop()
        self.server.should_exit = True
        self.thread.join(timeout=STOP_TIMEOUT)
        if self.thread.is_alive():
            self.server.force_exit = True
            self.thread.join(timeout=STOP_TIMEOUT)


def start_http(settings: Any, context: Any, sock: socket.socket | None = None) -> HTTPHandle:
    """Serve :func:`create_app` of ``context`` (a node or a WebContext) on ``http.bind``.

    Returns once the server accepts connections. Port 0 picks a free port (``handle.port``).
    ``sock``: an address :func:`bind_http` bound already (else it is bound here). A bind
    failure is a :class:`ConfigError`.
    """
    if sock is None:
        sock = bind_http(settings)
    host, port = sock.getsockname()[:2]
    http = settings.http
    cert, key = getattr(http, "cert", None), getattr(http, "key", None)
    config = uvicorn.Config(
        create_app(context),
        log_level="warning",
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=5,
        ssl_certfile=cert,
        ssl_keyfile=key,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="http")
    thread.daemon = True
    thread.start()
    deadline = time.monotonic() + START_TIMEOUT
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            sock.close()
            raise ConfigError(f"the HTTP server on {host}:{port} did not start")
        time.sleep(0.02)
    watcher = None
    if cert is not None and key is not None:
        watcher = CertificateWatcher(server, cert, key).start()
    handle = HTTPHandle(server, thread, host, port, https=cert is not None, watcher=watcher)
    log.info("HTTP API and worklist on %s", handle.url)
    return handle
