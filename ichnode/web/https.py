"""HTTPS certificate renewal without a restart.

An operator renews the HTTP side's certificate by replacing ``http.cert`` and ``http.key``; a
thread looks at the two files once per :data:`~ichnode.node.tls.CHECK_SECONDS` and, when they
changed and load as a pair, loads them into the context uvicorn serves with, in uvicorn's own
event loop, so that the next handshake presents the new certificate. Files that do not load (a
half-written copy, a key of another certificate) are logged once per change and the previous
certificate stays in use, as on the DICOM port (:mod:`ichnode.node.tls`).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import uvicorn

from ichnode.errors import ConfigError
from ichnode.node.preflight import check_https_files
from ichnode.node.tls import CHECK_SECONDS, file_fingerprint

log = logging.getLogger(__name__)


class CertificateWatcher:
    """Reloads a running uvicorn server's certificate chain when its files change."""

    def __init__(
        self, server: uvicorn.Server, cert: Path, key: Path, interval: float = CHECK_SECONDS
    ) -> None:
        self.server, self.cert, self.key, self.interval = server, cert, key, interval
        self._files = self._fingerprints()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="https-watch", daemon=True)

    def _fingerprints(self) -> tuple:
        return (file_fingerprint(self.cert), file_fingerprint(self.key))

    def start(self) -> CertificateWatcher:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.check()

    def check(self) -> bool:
        """Reload if the files changed and load; True when the new certificate was loaded."""
        files = self._fingerprints()
        if files == self._files:
            return False
        self._files = files  # files that fail to load are reported once per change
        try:
            check_https_files(self.cert, self.key)  # in a scratch context first
        except ConfigError as exc:
            log.error("HTTPS: changed files not loaded, still using the previous ones: %s", exc)
            return False
        context = self.server.config.ssl
        servers = getattr(self.server, "servers", None) or []
        if context is None or not servers:
            return False
        loop = servers[0].get_loop()
        loop.call_soon_threadsafe(context.load_cert_chain, str(self.cert), str(self.key))
        log.info("HTTPS: certificate or key file changed; new connections use it")
        return True
