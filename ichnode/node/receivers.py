"""``ichnode serve``'s DICOM receivers on every core: more processes on the one port.

One Python process receives with one GIL: pynetdicom's PDU reads, the header read and the
statements of each C-STORE run on one core however many associations arrive. With
``receivers = N`` (default: the core count) ``serve`` runs N-1 receiver processes beside the
node's own SCP, all listening on the same port with ``SO_REUSEPORT``, so the kernel spreads
new connections over them. Each receiver is only the SCP (:class:`~ichnode.node.scp.
StorageSCP`): its own database engine and store, the same checks, the same durable write and
commit before Success. The web, the monitor, the reporter, the outbox, the notifier and the
inference workers run once, in the node. A receiver wakes the inference process when it queues
an instance (worker threads in the node's process: through a relay thread there).

Per-process state: association limits (``max_associations`` and the per-minute limit) are
counted by each receiver, so the node as a whole accepts up to N times as many; the audit
rows are written by whichever receiver took the association. A receiver that dies is
restarted (:class:`~ichnode.node.supervise.Supervised`); one killed mid-instance left at most
a temp file (swept at the next start) and answered nothing for it.
"""

from __future__ import annotations

import logging
import os
import socket
from multiprocessing.synchronize import Event as ProcessEvent

from ichnode.config import Settings
from ichnode.node.supervise import CONTEXT, Supervised, Wakeup, child_stop, wait_until

log = logging.getLogger(__name__)


def can_share_port() -> bool:
    """True where several sockets may listen on one port (``SO_REUSEPORT``: Linux, BSDs)."""
    return hasattr(socket, "SO_REUSEPORT")


def receiver_count(settings: Settings) -> int:
    """How many processes receive: ``settings.receivers`` (0: one per core), 1 without
    ``SO_REUSEPORT``."""
    wanted = settings.receivers or os.cpu_count() or 1
    if wanted > 1 and not can_share_port():
        log.warning("receivers = %d: this platform cannot share a port; receiving in one", wanted)
        return 1
    return wanted


#: Seconds :meth:`Receivers.start` waits for every receiver to listen.
START_TIMEOUT = 120.0


def run_receiver(
    settings: Settings,
    wake: Wakeup | None,
    listening: ProcessEvent,
    parent_pid: int,
) -> None:
    """A receiver process's body: the SCP alone on the shared port until told to stop; sets
    ``listening`` once it accepts associations (only the node waits on it)."""
    stop = child_stop(parent_pid)
    from ichnode.db.session import open_database
    from ichnode.node.scp import StorageSCP
    from ichnode.node.tls import ReloadingContext
    from ichnode.store import Store

    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    store = Store(settings.store, settings.min_free_bytes)
    engine, sessions = open_database(settings, create=False)
    scp = StorageSCP(settings, store, sessions, on_stored=wake.set if wake is not None else None)
    scp.start(ReloadingContext(settings.tls) if settings.tls.enabled else None, share_port=True)
    listening.set()
    log.info("receiver process %d listening on %s:%d", os.getpid(), settings.bind, settings.port)
    wait_until(stop)
    scp.shutdown()  # in-flight C-STOREs finish and are answered
    engine.dispose()


class Receivers:
    """The node's extra receiver processes (``count`` of them), each restarted if it dies."""

    def __init__(self, settings: Settings, count: int, wake: Wakeup | None) -> None:
        self.listening = [CONTEXT.Event() for _ in range(count)]
        self.children = [
            Supervised(f"ichnode-receiver-{i + 1}", run_receiver, (settings, wake, listening))
            for i, listening in enumerate(self.listening)
        ]

    def start(self) -> None:
        """Start every receiver; returns once each listens (RuntimeError after
        :data:`START_TIMEOUT` s)."""
        for child in self.children:
            child.start()
        for child, listening in zip(self.children, self.listening, strict=True):
            if not listening.wait(START_TIMEOUT):
                self.stop()
                raise RuntimeError(f"{child.name} did not listen within {START_TIMEOUT:.0f} s")

    def stop(self) -> None:
        """Stop accepting in every receiver; each answers what it has in flight, then exits."""
        for child in self.children:
            child.request_stop()
        for child in self.children:
            child.join()
