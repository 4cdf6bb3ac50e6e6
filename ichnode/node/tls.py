"""DICOM TLS on the listening port: the server context, and its reload when its files change.

An operator renews the server certificate or publishes a new CRL by replacing the file; the
next connection uses it, without a restart. The files are looked at no more than once per
:data:`CHECK_SECONDS`, on an incoming connection. Files that no longer load (a half-written
copy, a wrong key) are logged once and the previous context stays in use until they load.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path

from ichnode.config import TLSSettings
from ichnode.errors import ConfigError

log = logging.getLogger(__name__)

#: Least time between two looks at the certificate, key, CA and CRL files.
CHECK_SECONDS = 1.0


def tls_context(tls: TLSSettings) -> ssl.SSLContext | None:
    """The server-side TLS context of the listening port, or None when TLS is off."""
    if not tls.enabled:
        return None
    if not tls.cert or not tls.key:
        raise ConfigError("invalid setting tls: enabled needs tls.cert and tls.key")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(str(tls.cert), str(tls.key))
        if tls.ca:
            ctx.load_verify_locations(str(tls.ca))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"invalid setting tls: cannot load certificate or key: {exc}") from None
    if tls.require_client_cert:
        if not tls.ca:
            raise ConfigError("invalid setting tls: require_client_cert needs tls.ca")
        ctx.verify_mode = ssl.CERT_REQUIRED
    if tls.crl:
        if not tls.ca:
            raise ConfigError("invalid setting tls: crl needs tls.ca")
        try:
            ctx.load_verify_locations(str(tls.crl))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"invalid setting tls: cannot load the CRL: {exc}") from None
        ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    return ctx


def file_fingerprint(path: Path | None) -> tuple[int, int, int] | None:
    """What changes when a file is rewritten or replaced: inode, size, modification time."""
    if path is None:
        return None
    try:
        st = path.stat()
    except OSError:
        return (-1, -1, -1)
    return (st.st_ino, st.st_size, st.st_mtime_ns)


class ReloadingContext:
    """The listening port's TLS context, rebuilt when its certificate, key, CA or CRL changes.

    ``current()`` is called for each incoming connection. The first context is built at
    construction, so bad files stop the start with a :class:`ConfigError` as before.
    """

    def __init__(self, tls: TLSSettings, clock: Callable[[], float] = time.monotonic) -> None:
        context = tls_context(tls)
        if context is None:
            raise ConfigError("invalid setting tls: ReloadingContext needs tls.enabled")
        self.tls = tls
        self._context = context
        self._clock = clock
        self._files = self._fingerprints()
        self._checked = clock()
        self._lock = threading.Lock()

    def _fingerprints(self) -> tuple[tuple[int, int, int] | None, ...]:
        t = self.tls
        return tuple(file_fingerprint(p) for p in (t.cert, t.key, t.ca, t.crl))

    def current(self) -> ssl.SSLContext:
        """The context for a new connection, rebuilt first if a file changed."""
        now = self._clock()
        if now - self._checked < CHECK_SECONDS:
            return self._context
        with self._lock:
            self._checked = now
            files = self._fingerprints()
            if files == self._files:
                return self._context
            self._files = files  # a file that fails to load is reported once per change
            try:
                context = tls_context(self.tls)
            except ConfigError as exc:
                log.error("TLS: changed files not loaded, still using the previous ones: %s", exc)
                return self._context
            assert context is not None
            self._context = context
            log.info("TLS: certificate, key, CA or CRL file changed; new connections use it")
            return context
