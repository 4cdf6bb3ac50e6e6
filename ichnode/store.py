"""Where received files live: ``<root>/<study>/<series>/<sop>.dcm``, written durably.

Paths are built only from UIDs that passed :func:`valid_uid` (digits and dots), never from raw
strings, so no received value can steer a write outside the root. Files are written to a
temporary name, fsynced, renamed into place, and the folder is fsynced, so a file that exists
under its final name is complete.

The temporary files of writes in progress live in one folder per writing process,
``<root>/.incoming/<host>-<pid>/`` (inside the root: the same filesystem, so the rename is
atomic). What a killed process left is its folder alone: a node sweeps its host's folders of
processes no longer running when it starts (never another host's, on a shared store, nor a
live sibling's on this one), and a restarted receiver's at once, without walking the store.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import socket
import tempfile
import uuid
from pathlib import Path
from typing import BinaryIO, cast

from ichnode.errors import IchnodeError

_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+$")
UID_MAX_LENGTH = 64
#: The folder (under the store's root) of the writes in progress, one sub-folder per process.
INCOMING = ".incoming"


def _host_prefix() -> str:
    """``<host>-``: what the names of this host's folders of writes in progress start with."""
    return f"{socket.gethostname()}-"


def incoming_name(pid: int) -> str:
    """The name of process ``pid``'s folder of writes in progress: ``<host>-<pid>``."""
    return f"{_host_prefix()}{pid}"


def _running(pid: int) -> bool:
    """Whether a process ``pid`` runs on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's: running
        return True
    return True


def uid_hash(uid: str) -> str:
    """A short, stable, non-identifying tag for a UID in logs (10 hex characters of sha256)."""
    return hashlib.sha256(uid.encode()).hexdigest()[:10]


class StoreError(IchnodeError):
    """The file could not be written (disk full, permissions, free-space threshold)."""


def valid_uid(value: object) -> bool:
    """True for a DICOM UID: ≤ 64 characters, dot-separated numbers without leading zeros."""
    return isinstance(value, str) and len(value) <= UID_MAX_LENGTH and bool(_UID.match(value))


class Store:
    """A folder of received instances, addressed by (study, series, SOP instance) UIDs."""

    def __init__(self, root: str | Path, min_free_bytes: int = 0) -> None:
        self.root = Path(root).resolve()
        self.min_free_bytes = min_free_bytes
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # a file in the way, no permission, a read-only disk
            raise StoreError(
                f"cannot create the store folder {root} (setting store): "
                f"{exc.strerror or type(exc).__name__}"
            ) from None
        self._root_str = str(self.root)
        self._root_prefix = self._root_str.rstrip(os.sep) + os.sep
        self._incoming: tuple[int, Path] | None = None  # (pid, folder): a child has its own

    def relative_path(
        self, study_uid: str, series_uid: str, sop_uid: str, suffix: str = ".dcm"
    ) -> str:
        """``study/series/sop.dcm`` for validated UIDs; ValueError otherwise."""
        for name, uid in (("study", study_uid), ("series", series_uid), ("SOP instance", sop_uid)):
            if not valid_uid(uid):
                raise ValueError(f"invalid {name} UID")
        return f"{study_uid}/{series_uid}/{sop_uid}{suffix}"

    def path(self, relative: str) -> Path:
        """Absolute path of a stored file; refuses anything that would leave the root.

        Lexical normalisation (no symlink resolution: cheap on the hot path); the store's own
        paths are built from validated UIDs, so no link inside it comes from received data.
        """
        path = os.path.normpath(os.path.join(self._root_str, relative))
        if not path.startswith(self._root_prefix):
            raise ValueError("path outside the store")
        return Path(path)

    def holds(self, relative: str) -> bool:
        """Whether a stored file is still there (retention or an operator may have removed it)."""
        try:
            return self.path(relative).is_file()
        except ValueError:
            return False

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.root).free

    def write(self, relative: str, chunks: list[bytes | memoryview] | bytes | memoryview) -> int:
        """Write durably (temp file, fsync, rename, fsync folder); returns the size in bytes."""
        data = [chunks] if isinstance(chunks, bytes | bytearray | memoryview) else chunks
        size = sum(len(c) for c in data)
        self.make_room(size)
        final = self.path(relative)
        tmp: Path | None = None
        try:
            tmp = self._incoming_folder() / f"{final.name}.{uuid.uuid4().hex}.tmp"
            final.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
            try:
                for chunk in data:
                    view = memoryview(chunk)
                    while view:
                        view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, final)
            _fsync_dir(final.parent)
        except OSError as exc:
            self._incoming = None
            if tmp is not None:
                with contextlib.suppress(OSError):
                    tmp.unlink()
            raise StoreError(f"cannot write to the store: {exc.strerror or exc}") from None
        return size

    def make_room(self, size: int) -> None:
        """Raise :class:`StoreError` if writing ``size`` bytes would leave less free space than
        ``min_free_bytes`` (which keeps room for what is already acknowledged)."""
        if self.min_free_bytes and self.free_bytes() - size < self.min_free_bytes:
            raise StoreError("free disk space below the configured minimum")

    def spool(self) -> BinaryIO:
        """An anonymous scratch file on the store's disk, in this process's folder of writes
        in progress (a STOW-RS request body waits there, not in memory); gone once closed."""
        try:
            return cast(BinaryIO, tempfile.TemporaryFile(dir=self._incoming_folder(), buffering=0))
        except OSError as exc:
            self._incoming = None
            raise StoreError(f"cannot write to the store: {exc.strerror or exc}") from None

    def _incoming_folder(self) -> Path:
        """This process's folder of writes in progress, made at its first write (and again
        after a failed write, in case it was removed)."""
        pid = os.getpid()
        if self._incoming is None or self._incoming[0] != pid:
            folder = self.root / INCOMING / incoming_name(pid)
            folder.mkdir(parents=True, exist_ok=True)
            self._incoming = (pid, folder)
        return self._incoming[1]

    def sweep_temp(self) -> int:
        """Delete the temp files that processes of this host no longer running left behind
        (a node calls it before accepting associations: they were never acknowledged); a
        running process's folder, another ichnode's on this host or any other host's on a
        shared store, is left alone. Returns how many files were removed."""
        host = _host_prefix()
        removed = 0
        folders = (self.root / INCOMING).glob(f"{host}*")
        for folder in folders:
            pid = folder.name[len(host) :]
            if not pid.isdigit() or _running(int(pid)):  # another host's ("<host>-x-1"), or alive
                continue
            removed += _remove_folder(folder)
        return removed

    def sweep_process(self, pid: int) -> int:
        """Delete what process ``pid`` of this host (one that has died: a receiver the node
        restarts) left in its folder of writes in progress; how many files."""
        return _remove_folder(self.root / INCOMING / incoming_name(pid))

    def remove(self, relative: str) -> None:
        """Delete a stored file (used to undo a write whose database row failed)."""
        with contextlib.suppress(FileNotFoundError):
            self.path(relative).unlink()


def _remove_folder(folder: Path) -> int:
    """Delete ``folder`` (a process's temp files) and say how many files it held."""
    try:
        count = sum(1 for f in folder.iterdir() if f.is_file())
    except (FileNotFoundError, NotADirectoryError):
        return 0
    shutil.rmtree(folder, ignore_errors=True)
    return count


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
