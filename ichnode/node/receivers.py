"""``ichnode serve``'s DICOM receivers on every core: more processes on the one port.

One Python process receives with one GIL: pynetdicom's PDU reads, the header read and the
statements of each C-STORE run on one core however many associations arrive. With ``receivers =
N`` (default: the core count) ``serve`` runs N-1 receiver processes beside the node's own SCP,
all accepting on one listening socket the node bound
(:class:`~ichnode.node.transport.SharedListener`): a new connection goes to whichever process
accepts it first, the one with a free moment, so parallel associations spread by load. Each
receiver is only the SCP (:class:`~ichnode.node.scp.StorageSCP`): its own database engine and
store, the same checks, the same durable write and commit before Success. The web, the monitor,
the reporter, the outbox, the notifier and the inference workers run once, in the node. A
receiver wakes the inference process when it queues an instance (worker threads in the node's
process: through a relay thread there).

Per-process state: association limits (``max_associations`` and the per-minute limit) are
counted by each receiver, so the node as a whole accepts up to N times as many; the audit
rows are written by whichever receiver took the association. A receiver that dies is
restarted (:class:`~ichnode.node.supervise.Supervised`); one killed mid-instance answered
nothing for it and left at most temp files in its folder of writes in progress, which is
removed before it is restarted (:meth:`~ichnode.store.Store.sweep_process`).
"""

from __future__ import annotations

import functools
import logging
import os
from multiprocessing.synchronize import Event as ProcessEvent

from ichnode.config import Settings
from ichnode.node.supervise import CONTEXT, Supervised, Wakeup, child_stop, wait_until
from ichnode.node.transport import SharedListener
from ichnode.store import Store

log = logging.getLogger(__name__)


def receiver_count(settings: Settings) -> int:
    """How many processes receive: ``settings.receivers`` (0: one per core)."""
    return settings.receivers or os.cpu_count() or 1


#: Seconds :meth:`Receivers.start` waits for every receiver to listen.
START_TIMEOUT = 120.0


def run_receiver(
    settings: Settings,
    wake: Wakeup | None,
    listener: SharedListener,
    listening: ProcessEvent,
    pynetdicom_level: int,
    parent_pid: int,
) -> None:
    """A receiver process's body: the SCP alone on the node's listening socket ``listener`` until
    told to stop; sets ``listening`` once it accepts associations (only the node waits on
    it). ``pynetdicom_level``: the node's level for pynetdicom's logger (``--debug`` or not),
    which also decides the C-STORE path (``StorageSCP._install_fast_store``)."""
    stop = child_stop(parent_pid)
    from ichnode.db.session import open_database
    from ichnode.node.scp import StorageSCP
    from ichnode.node.tls import ReloadingContext

    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("pynetdicom").setLevel(pynetdicom_level)
    store = Store(settings.store, settings.min_free_bytes)
    engine, sessions = open_database(settings, create=False)
    scp = StorageSCP(settings, store, sessions, on_stored=wake.set if wake is not None else None)
    listener.adopt()
    scp.start(ReloadingContext(settings.tls) if settings.tls.enabled else None, listening=listener)
    listening.set()
    log.info("receiver process %d listening on %s:%d", os.getpid(), settings.bind, settings.port)
    wait_until(stop)
    scp.shutdown()  # in-flight C-STOREs finish and are answered
    engine.dispose()


class Receivers:
    """The node's extra receiver processes (``count`` of them) on its listening socket
    ``listener`` (slot 0 is the node's own), each restarted if it dies."""

    def __init__(
        self, settings: Settings, count: int, wake: Wakeup | None, listener: SharedListener
    ) -> None:
        self.settings = settings
        self.listening = [CONTEXT.Event() for _ in range(count)]
        self.listeners = [listener.for_process(i + 1) for i in range(count)]
        self.children = [
            Supervised(
                f"ichnode-receiver-{i + 1}",
                run_receiver,
                (settings, wake, mine, listening, logging.getLogger("pynetdicom").level),
                on_exit=functools.partial(self._gone, mine),
            )
            for i, (mine, listening) in enumerate(zip(self.listeners, self.listening, strict=True))
        ]

    def _gone(self, listener: SharedListener, pid: int) -> None:
        """Receiver ``pid`` (on ``listener``'s slot) died: no process defers to its slot
        until its restart adopts it, and its temp files go (its writes were never
        acknowledged)."""
        listener.vacate()
        removed = Store(self.settings.store).sweep_process(pid)
        if removed:
            log.info("removed %d unfinished temp files of receiver process %s", removed, pid)

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
        for listener in self.listeners:
            listener.close()
