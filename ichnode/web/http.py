"""Serving the app: bind checks and uvicorn in a background thread."""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
import time
from typing import Any

import uvicorn

from ichnode.config import split_bind
from ichnode.errors import ConfigError
from ichnode.web.app import create_app

log = logging.getLogger(__name__)

#: ``settings.http.allow_remote_without_token`` when the settings lack the field.
#: Seconds to wait for uvicorn to start serving, and to stop.
START_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0


def parse_bind(bind: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` for IPv6) → ``(host, port)``; ConfigError otherwise."""
    try:
        return split_bind(bind)
    except ValueError as exc:
        raise ConfigError(f"invalid setting http.bind: {exc}") from None


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_http_settings(settings: Any) -> tuple[str, int]:
    """Validate ``settings.http``; returns ``(host, port)`` to bind.

    Without a token the API shows patient data to anyone who can reach it, so it listens on
    loopback only unless ``http.allow_remote_without_token`` says otherwise.
    """
    http = settings.http
    host, port = parse_bind(http.bind)
    if not http.token and not is_loopback(host) and not http.allow_remote_without_token:
        raise ConfigError(
            f"refusing to serve HTTP on {host} without a token: set http.token, bind to "
            "127.0.0.1, or set http.allow_remote_without_token = true"
        )
    return host, port


class HTTPHandle:
    """A running HTTP server; ``stop()`` shuts it down and joins its thread."""

    def __init__(self, server: uvicorn.Server, thread: threading.Thread, host: str, port: int):
        self.server = server
        self.thread = thread
        self.host = host
        self.port = port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=STOP_TIMEOUT)
        if self.thread.is_alive():
            self.server.force_exit = True
            self.thread.join(timeout=STOP_TIMEOUT)


def bind_http(settings: Any) -> socket.socket:
    """Check ``settings.http`` and bind its address: the socket :func:`start_http` serves.

    ``ichnode serve`` calls it before it touches the database, so that a busy port or a bad
    address is an error before anything is created. A failure is a :class:`ConfigError`
    naming the address and the setting.
    """
    host, port = check_http_settings(settings)
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)  # held from now on: nothing else takes the port while the node starts
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"cannot listen on {host}:{port} (setting http.bind): {exc.strerror or exc}"
        ) from None
    return sock


def start_http(settings: Any, context: Any, sock: socket.socket | None = None) -> HTTPHandle:
    """Serve :func:`create_app` of ``context`` (a node or a WebContext) on ``http.bind``.

    Returns once the server accepts connections. Port 0 picks a free port (``handle.port``).
    ``sock``: an address :func:`bind_http` bound already (else it is bound here). A bind
    failure is a :class:`ConfigError`.
    """
    if sock is None:
        sock = bind_http(settings)
    host, port = sock.getsockname()[:2]
    config = uvicorn.Config(
        create_app(context),
        log_level="warning",
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=5,
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
    handle = HTTPHandle(server, thread, host, port)
    log.info("HTTP API and worklist on %s", handle.url)
    return handle
