"""Serving the app: bind checks and uvicorn in a background thread."""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
import time
from typing import Any

import uvicorn

from ichnode.errors import ConfigError
from ichnode.web.app import create_app

log = logging.getLogger(__name__)

#: ``settings.http.allow_remote_without_token`` when the settings lack the field.
#: Seconds to wait for uvicorn to start serving, and to stop.
START_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0


def parse_bind(bind: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` for IPv6) → ``(host, port)``; ConfigError otherwise."""
    host, sep, port = bind.strip().rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"invalid setting http.bind: expected HOST:PORT, got {bind!r}")
    return host, int(port)


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


def start_http(settings: Any, context: Any) -> HTTPHandle:
    """Serve :func:`create_app` of ``context`` (a node or a WebContext) on ``http.bind``.

    Returns once the server accepts connections. Port 0 picks a free port (``handle.port``).
    A bind failure is a :class:`ConfigError`.
    """
    host, port = check_http_settings(settings)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"cannot listen on http.bind {host}:{port}: {exc.strerror or exc}"
        ) from None
    port = sock.getsockname()[1]
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
