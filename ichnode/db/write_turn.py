"""Turns at SQLite's one write lock for the receivers: a queue instead of SQLite's busy sleep.

SQLite lets one connection write at a time. A connection that finds the lock taken waits in
SQLite's busy handler, which *sleeps* (1, 2, 5, 10, 15, 20, 25 ... 100 ms) and tries again:
with several associations (threads, or receiver processes) committing C-STOREs, each commit
holding the lock for its WAL fsync of a few milliseconds, a waiter sleeps longer than the lock
is held. Here the receivers take turns before their write transaction: a thread lock within
the process, then an ``flock`` on a file beside the database across processes; both wake the
next writer the moment the lock is let go. Nothing about what is written or when it is
durable changes; other writers (workers, monitor) still meet SQLite's own lock. PostgreSQL
needs no turns (row locks, its own group commit): there this is a no-op.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from collections.abc import Iterator
from pathlib import Path

#: Suffix of the lock file beside a SQLite database (it holds no data).
LOCK_SUFFIX = ".write-turn"


class WriteTurns:
    """One process's turns at one SQLite file's write lock (``database`` None: PostgreSQL or
    an in-memory database, no turns)."""

    def __init__(self, database: Path | None) -> None:
        self.path = database.with_name(database.name + LOCK_SUFFIX) if database else None
        self._thread_lock = threading.Lock()
        self._fd: int | None = None

    @contextlib.contextmanager
    def turn(self) -> Iterator[None]:
        """Hold the turn for one write transaction (the statements and their commit)."""
        if self.path is None:
            yield
            return
        with self._thread_lock:
            if self._fd is None:
                self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o640)
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
