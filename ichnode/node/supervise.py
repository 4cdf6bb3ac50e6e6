"""Child processes of ``ichnode serve`` that are restarted when they die and die with it.

``serve`` runs its inference workers (:mod:`ichnode.node.inference_process`) and its extra
DICOM receivers (:mod:`ichnode.node.receivers`) as spawned children: a fresh interpreter each,
not a fork of a process with threads and open sockets. A :class:`Supervised` child is
restarted when it exits while the node runs, asked to stop (SIGTERM) when the node stops,
and killed if it does not stop in time. A node killed with SIGKILL cannot stop its
children, so each child watches its parent (:func:`child_stop`): a receiver left behind
would keep the DICOM port and acknowledge instances nobody is serving.

No multiprocessing ``Event`` is set where a killed waiter could block the setter: its
``set()`` waits for every sleeping waiter to wake, so a waiter killed with SIGKILL would hang
the setter (a C-STORE handler waking the workers) for ever. (A receiver's ``listening`` event
is one: only the node waits on it, and the receiver dies with the node.) A child is asked
to stop with SIGTERM; the receivers wake the workers through a :class:`Wakeup`, a semaphore
whose release never waits.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import os
import signal
import sys
import threading
from collections.abc import Callable
from multiprocessing.process import BaseProcess

log = logging.getLogger(__name__)

#: Seconds a child is given to finish its work and give back its claims before it is killed.
STOP_TIMEOUT = 30.0
#: Seconds between checks that the child (or, in the child, the parent) is alive.
WATCH_SECONDS = 1.0
#: prctl(2) option: the signal the kernel sends this process when its parent thread dies.
_PR_SET_PDEATHSIG = 1

#: The one start method of the node's children.
CONTEXT = multiprocessing.get_context("spawn")


def child_stop(parent_pid: int) -> threading.Event:
    """In a child: the event that ends it, set by SIGTERM (the node stopping it) or when the
    node that started it is gone.

    On Linux the kernel sends SIGKILL the moment the parent dies (``PR_SET_PDEATHSIG``): what
    the child had not answered was never acknowledged. Elsewhere, and in case the parent died
    before that was set, a thread checks the parent id every second.
    """
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda _signum, _frame: stop.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the node's Ctrl-C is the node's to handle
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:
        os._exit(1)

    def watch() -> None:
        while not stop.wait(WATCH_SECONDS):
            if os.getppid() != parent_pid:
                log.error("the node (pid %d) is gone: this child stops", parent_pid)
                stop.set()
                return

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()
    return stop


def wait_until(stop: threading.Event) -> None:
    """Block the child's main thread until ``stop`` (in steps, so SIGTERM's handler runs)."""
    while not stop.wait(WATCH_SECONDS):
        pass


class Wakeup:
    """``threading.Event``'s ``set``/``clear``/``wait`` across processes, safe against a
    waiter killed while it waits: ``set`` releases a semaphore and never blocks."""

    def __init__(self) -> None:
        self._sem = CONTEXT.Semaphore(0)

    def set(self) -> None:
        try:
            if self._sem.get_value() > 0:  # already set: do not count up for ever
                return
        except NotImplementedError:  # macOS has no sem_getvalue
            pass
        self._sem.release()

    def clear(self) -> None:
        while self._sem.acquire(False):
            pass

    def wait(self, timeout: float | None = None) -> bool:
        """True when woken (the wake-up is consumed, then put back for other waiters)."""
        woken = self._sem.acquire(True, timeout)
        if woken:
            self._sem.release()
        return woken

    def is_set(self) -> bool:
        if self._sem.acquire(False):
            self._sem.release()
            return True
        return False


class Supervised:
    """One child process running ``target(*args, parent_pid)``; restarted if it dies.

    The target calls :func:`child_stop` first, and stops when the event it returns is set."""

    def __init__(
        self,
        name: str,
        target: Callable[..., None],
        args: tuple,
        on_exit: Callable[[int], None] | None = None,
    ) -> None:
        self.name = name
        self.target = target
        self.args = args
        #: Called with a dead child's pid before it is restarted (to clear what it left).
        self.on_exit = on_exit
        self._stopping = threading.Event()
        self.process: BaseProcess | None = None
        self.restarts = 0
        self.stop_timeout = STOP_TIMEOUT
        self._watcher: threading.Thread | None = None

    def start(self) -> None:
        """Start the child, and the watcher that restarts it and stops it.

        The kernel's parent-death signal follows the *thread* that started the child: a child
        started by a thread that ends is killed with it, and restarted by the watcher, which
        lives as long as the node."""
        self._launch()
        self._watcher = threading.Thread(target=self._watch, name=f"{self.name}-watch", daemon=True)
        self._watcher.start()

    def _launch(self) -> None:
        process = CONTEXT.Process(
            target=self.target,
            args=(*self.args, os.getpid()),
            name=self.name,
            daemon=True,
        )
        process.start()
        self.process = process
        log.info("%s process %s started", self.name, process.pid)

    def _watch(self) -> None:
        while not self._stopping.wait(WATCH_SECONDS):
            process = self.process
            if process is not None and not process.is_alive() and not self._stopping.is_set():
                log.error("%s process exited (code %s): restarting it", self.name, process.exitcode)
                self.restarts += 1
                if self.on_exit is not None and process.pid is not None:
                    try:
                        self.on_exit(process.pid)
                    except Exception as exc:  # noqa: BLE001 - clearing up must not stop the restart
                        log.error("%s: clearing up after it failed: %s", self.name, exc)
                self._launch()
        # This thread outlives the child: its exit would send the child the parent-death signal.
        process = self.process
        if process is None:
            return
        if process.is_alive():
            process.terminate()  # SIGTERM: the child's stop event
        process.join(self.stop_timeout)
        if process.is_alive():
            log.error("%s process did not stop in %.0f s: killing it", self.name, self.stop_timeout)
            process.kill()
            process.join()

    def request_stop(self) -> None:
        """Ask the child to stop (see :meth:`join`); it is not restarted from now on."""
        self._stopping.set()

    def join(self) -> None:
        """Wait for the child to stop (killed if it has not within ``stop_timeout`` s)."""
        if self._watcher is not None:
            self._watcher.join()

    def stop(self) -> None:
        self.request_stop()
        self.join()


class ChildHealth(threading.Thread):
    """A stand-in thread for ``/healthz`` and ``ichnode_workers_alive``: alive while the
    supervised child is (named as the thread it replaces, ``worker-N``). Never started; the
    node stops the child itself, so joining it returns at once."""

    def __init__(self, name: str, child: Supervised) -> None:
        super().__init__(name=name, daemon=True)
        self.child = child

    def is_alive(self) -> bool:
        process = self.child.process
        return process is not None and process.is_alive()

    def join(self, timeout: float | None = None) -> None:
        return None
