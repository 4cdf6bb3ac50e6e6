"""``ichnode serve``: the SCP, the workers and the study monitor, started together.

The node's process runs the SCP, the monitor, the reporter, the outbox, the notifier and the
web; the workers run in a child process (``inference_process``, the default) or as threads
here; ``serve`` adds receiver processes on the same port (``receivers``,
:mod:`ichnode.node.receivers`).
"""

from __future__ import annotations

import logging
import signal
import socket
import sys
import threading
from collections.abc import Callable
from functools import partial

import torch

from ichnode.audit import AuditPruner
from ichnode.config import Settings
from ichnode.db import queue
from ichnode.db.session import display_url, open_database
from ichnode.errors import ConfigError
from ichnode.inference import Predictor, score_study
from ichnode.node.inference_process import InferenceProcess
from ichnode.node.monitor import Monitor, ResultPolicy
from ichnode.node.notifier import Notifier, receivers
from ichnode.node.outbox import Outbox
from ichnode.node.preflight import preflight
from ichnode.node.receivers import Receivers, receiver_count
from ichnode.node.reload import ModelWatcher
from ichnode.node.reporting import Reporter
from ichnode.node.scp import StorageSCP
from ichnode.node.stow import StowReceiver
from ichnode.node.supervise import CONTEXT, ChildHealth, Wakeup
from ichnode.node.tls import ReloadingContext
from ichnode.node.transport import SharedListener
from ichnode.node.worker import Worker
from ichnode.report.saliency import SaliencyModel
from ichnode.store import Store

log = logging.getLogger(__name__)

#: How long the ready line waits for the inference process to load its model (s).
MODEL_LOAD_WAIT = 120.0


class Node:
    """One running node. ``start()`` returns once it accepts associations."""

    def __init__(self, settings: Settings, on_result: Callable[[int], None] | None = None) -> None:
        self.settings = settings
        self.on_result = on_result
        self.stop_event = threading.Event()
        self.wake = threading.Event()
        self.threads: list[threading.Thread] = []
        self.workers: list[Worker] = []
        #: The workers' child process (``inference_process``); None: they are threads here.
        self.inference: InferenceProcess | None = None
        #: The receiver processes beside this one (``start(receiving=N)``, N > 1).
        self.receivers: Receivers | None = None

    def worker_ids(self) -> list[str]:
        """Stable ids for this node's in-process workers, so a restart can reclaim their leases."""
        host = socket.gethostname()
        return [f"{host}:serve:{self.settings.port}:{i}" for i in range(self.settings.workers)]

    def start(self, announce: bool = True, receiving: int = 1) -> str:
        """Open the database, load the model, start the threads and listen for DICOM.

        Returns the ready line; ``announce=False`` leaves logging it to the caller (``serve``
        announces it once the HTTP server listens too). ``receiving``: processes receiving
        on the port, this one included (``serve`` passes the ``receivers`` setting's count).
        """
        s = self.settings
        if s.torch_threads:
            torch.set_num_threads(s.torch_threads)
        self.store = Store(
            s.store, s.min_free_bytes
        )  # before the database: a bad path migrates nothing
        self.engine, self.sessions = open_database(s)
        swept = self.store.sweep_temp()
        if swept:
            log.info("removed %d unfinished temp files from the store (never acknowledged)", swept)
        self.predictor = Predictor(s.model, s.device, amp=s.amp)
        # Grad-CAM hooks and toggles the model: the reports and the web's overlay share one
        # private CPU copy, which follows a reloaded model.
        self.saliency = SaliencyModel(self.predictor)
        tls = ReloadingContext(s.tls) if s.tls.enabled else None
        with self.sessions.begin() as session:
            for wid in self.worker_ids():
                released = queue.release(session, wid)
                if released:
                    log.info("released %d instances held before a restart by %s", released, wid)
        if s.inference_process and s.workers:
            self.inference = InferenceProcess(s, self.worker_ids())
            self.inference.start()
            # /healthz and the metrics see the child's workers as the threads they replace.
            self.threads += [
                ChildHealth(f"worker-{i + 1}", self.inference) for i in range(s.workers)
            ]
        elif s.workers:
            self.predictor.warm_up()  # the workers are threads of this process
        for wid in [] if self.inference is not None else self.worker_ids():
            worker = Worker.from_settings(
                s, self.sessions, self.store, self.predictor, wid, self.wake
            )
            self.workers.append(worker)
            self._spawn(worker.run, f"worker-{len(self.workers)}")
        self.outbox = Outbox(self.sessions, self.store, s)
        self._spawn(self.outbox.run, "outbox")
        # Builds the report objects of every pending result version, starting with any that
        # a previous run committed but never reported.
        self.reporter = Reporter(
            self.sessions, self.store, s, self.saliency.checkpoint, on_done=self._on_reported
        )
        self._spawn(self.reporter.run, "reporter")
        self.notifier = Notifier(self.sessions, s)
        self._spawn(self.notifier.run, "notifier")
        self.monitor = Monitor(
            self.sessions,
            self.result_policy,
            s.stable_seconds,
            on_result=self._on_resulted,
            receivers=receivers(s),
        )
        self._spawn(self.monitor.run, "monitor")
        if s.model is not None and s.model_reload:
            watcher = ModelWatcher(s.model, self.predictor)
            self._spawn(watcher.run, "model-watcher")
        if s.audit_retention_days:
            self._spawn(AuditPruner(self.sessions, s.audit_retention_days).run, "audit-prune")
        self.scp = StorageSCP(s, self.store, self.sessions, on_stored=self._on_stored)
        self.stow = StowReceiver(s, self.store, self.sessions, on_stored=self._on_stored)
        try:
            listening = (
                SharedListener.bind(s.bind, s.port, receiving, CONTEXT) if receiving > 1 else None
            )
            self.scp.start(tls, listening=listening)
        except OSError as exc:
            self.stop()
            raise ConfigError(
                f"cannot listen on {s.bind}:{s.port} (settings bind and port): "
                f"{exc.strerror or exc}"
            ) from None
        if listening is not None:
            wake = self.inference.wake if self.inference is not None else Wakeup()
            if self.inference is None:  # worker threads here: pass the receivers' wake-ups on
                self._spawn(partial(self._relay, wake), "receiver-wake")
            self.receivers = Receivers(s, receiving - 1, wake, listening)
            self.receivers.start()
        if self.inference is not None and not self.inference.wait_loaded(MODEL_LOAD_WAIT):
            log.warning(
                "the inference process has not loaded the model within %.0f s: receiving "
                "anyway, slices are scored once it has",
                MODEL_LOAD_WAIT,
            )
        ready = (
            f"ichnode ready: AE {s.ae_title} on {s.bind}:{s.port}"
            f"{' (TLS)' if tls else ''}"
            f"{f' in {receiving} receiver processes' if receiving > 1 else ''}, "
            f"database {display_url(s.db_url)}, model {self.predictor.model_id} "
            f"on {self.predictor.device}, {s.workers} worker(s)"
        )
        if announce:
            log.info(ready)
        return ready

    def result_policy(self) -> ResultPolicy:
        """How the monitor results studies with the model served now."""
        ckpt = self.predictor.checkpoint
        return ResultPolicy(
            ckpt.decision_thresholds,
            ckpt.model_id,
            partial(score_study, ckpt),
            ckpt.spec.context,
            stored=self.store.holds,
        )

    def _on_stored(self) -> None:
        """An instance was queued: wake the workers (threads or the inference process)."""
        self.wake.set()
        if self.inference is not None:
            self.inference.notify()

    def _relay(self, wake: Wakeup, stop: threading.Event) -> None:
        """Wake this process's worker threads when a receiver process queued an instance."""
        while not stop.is_set():
            if wake.wait(1.0):
                wake.clear()
                self.wake.set()

    def _on_resulted(self, result_id: int) -> None:
        """Monitor callback: build the new version's objects, send its notifications."""
        self.reporter.wake.set()
        self.notifier.wake.set()

    def _on_reported(self, result_id: int, status: object) -> None:
        """Reporter callback: wake the outbox for the new rows, then the ``on_result`` hook."""
        self.outbox.wake.set()
        if self.on_result is not None:
            self.on_result(result_id)

    def _spawn(self, target: Callable[[threading.Event], None], name: str) -> None:
        thread = threading.Thread(target=target, args=(self.stop_event,), name=name, daemon=True)
        thread.start()
        self.threads.append(thread)

    def stop(self) -> None:
        """Stop accepting, let in-flight stores finish, release leases, stop threads."""
        if self.receivers is not None:
            for child in self.receivers.children:
                child.request_stop()  # they stop accepting while this one does
        scp = getattr(self, "scp", None)
        if scp is not None:
            scp.shutdown()
        if self.receivers is not None:
            self.receivers.stop()
        self.stop_event.set()
        self.wake.set()
        if self.inference is not None:
            self.inference.stop()
        for part in ("outbox", "reporter", "notifier"):
            waiting = getattr(self, part, None)
            if waiting is not None:
                waiting.wake.set()
        for thread in self.threads:
            thread.join(timeout=30)
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.dispose()


def serve(settings: Settings, http_sock: socket.socket | None = None) -> None:
    """Run a node until SIGTERM or SIGINT; exit cleanly.

    ``http_sock``: the HTTP address :func:`~ichnode.node.preflight.preflight` bound already
    (``ichnode serve`` checks before it imports this module); checked here when None and HTTP
    is on. The ready line is printed (and logged) once, when both DICOM and HTTP listen.
    """
    if http_sock is None:
        http_sock = preflight(settings)
    node = Node(settings)
    stop = threading.Event()

    def _signal(signum: int, _frame: object) -> None:
        log.info("received %s: shutting down", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, _signal)
    signal.signal(signal.SIGINT, _signal)
    try:
        ready = node.start(announce=False, receiving=receiver_count(settings))
    except BaseException:
        if http_sock is not None:
            http_sock.close()
        raise
    http = None
    if http_sock is not None:
        from ichnode.web import start_http

        try:
            http = start_http(settings, node, sock=http_sock)
        except BaseException:
            http_sock.close()
            node.stop()
            raise
        ready += f", HTTP on {http.url}"
    log.info(ready)
    print(ready, flush=True)
    try:
        while not stop.wait(1.0):
            pass
    finally:
        if http is not None:
            http.stop()
        node.stop()
        log.info("ichnode stopped")
        sys.stdout.flush()
