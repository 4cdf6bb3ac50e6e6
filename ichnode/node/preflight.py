"""What can stop ``ichnode serve`` before it touches anything, checked before torch is imported.

The HTTP settings and address (bound, and held for the server), the DICOM port, the store
folder: a busy port, a bad address or a store that cannot be made is a one-line error naming
the setting before the database or the model is opened, and -- as this module imports neither
torch nor the web framework -- within a second of the command starting.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
from typing import Any

from ichnode.config import Settings, split_bind
from ichnode.errors import ConfigError
from ichnode.store import Store, StoreError


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
    if getattr(http, "cert", None) is not None:
        check_https_files(http.cert, http.key)
    return host, port


def check_https_files(cert: Any, key: Any) -> None:
    """ConfigError naming the settings when ``http.cert`` and ``http.key`` do not load as a
    certificate chain and its private key (missing, unreadable, not PEM, not a pair)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        ctx.load_cert_chain(str(cert), str(key))
    except ssl.SSLError as exc:
        reason = exc.reason or str(exc)
    except OSError as exc:
        reason = exc.strerror or str(exc)
    else:
        return
    raise ConfigError(f"invalid setting http.cert / http.key: cannot load them: {reason}")


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


def check_dicom_port(settings: Settings) -> None:
    """ConfigError naming the setting when the DICOM address cannot be bound (in use, bad)."""
    host, port = settings.bind, settings.port
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host.strip("[]"), port))
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on {host}:{port} (settings bind and port): {exc.strerror or exc}"
            ) from None


def preflight(settings: Settings) -> socket.socket | None:
    """Check the HTTP settings and bind their address, then the DICOM port, then the store
    folder (created if missing, as the node would: an error names the setting).

    Returns the bound HTTP socket, for the server to serve (None when HTTP is off).
    """
    http_sock = bind_http(settings) if settings.http.enabled else None
    try:
        check_dicom_port(settings)
        Store(settings.store, settings.min_free_bytes)
    except (ConfigError, StoreError):
        if http_sock is not None:
            http_sock.close()
        raise
    return http_sock
