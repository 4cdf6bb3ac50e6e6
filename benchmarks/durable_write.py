"""The floor a durable receiver stands on: writing N slice-sized files, with and without fsync.

    python benchmarks/durable_write.py [--files 400] [--bytes 530000] [--runs 3] [--dir DIR]

Each run writes ``--files`` files of ``--bytes`` random bytes into a fresh folder under
``--dir`` (default: the system's temporary folder; give the disk the node's store is on),
three ways, interleaved: as DCMTK's ``storescp`` does (create, write, close: no ``fsync``), with
the file ``fsync``ed, and as ichnode's store does before it answers Success (a temporary file
written and ``fsync``ed, renamed into its folder, the folder ``fsync``ed). Prints the median
time of each and its ratio to the first. No receiver, no network, no database: the time of the
third is what no durable receiver on this disk can go below, so it bounds what "≥ 0.5× storescp"
can mean here (``benchmarks/ingest.py`` measures the receivers themselves). A fourth way, not
used by the store: the temp file renamed into place and one Linux ``syncfs`` of the
filesystem instead of the two ``fsync``s (one journal commit for data and rename; it would
also cover a SQLite database on the same filesystem).
"""

from __future__ import annotations

import argparse
import ctypes
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path


def write_files(folder: Path, count: int, data: bytes, mode: str) -> float:
    """Seconds to write ``count`` files into ``folder`` the ``mode`` way."""
    folder.mkdir()
    start = time.perf_counter()
    for i in range(count):
        final = folder / f"{i}.dcm"
        path = folder / f"{i}.tmp" if mode in ("durable", "syncfs") else final
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, data)
            if mode in ("fsync", "durable"):
                os.fsync(fd)
        finally:
            os.close(fd)
        if mode in ("durable", "syncfs"):
            os.rename(path, final)
            dir_fd = os.open(folder, os.O_RDONLY)
            try:
                (os.fsync if mode == "durable" else _syncfs)(dir_fd)
            finally:
                os.close(dir_fd)
    return time.perf_counter() - start


def _syncfs(fd: int) -> None:
    """Linux ``syncfs(2)``: every dirty page and metadata change of ``fd``'s filesystem."""
    if _LIBC.syncfs(fd) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))


_LIBC = ctypes.CDLL(None, use_errno=True)


MODES = {
    "plain": "create + write (storescp)",
    "fsync": "+ fsync of the file",
    "durable": "+ rename + fsync of the folder (ichnode)",
    "syncfs": "temp, rename, one syncfs instead of both fsyncs",
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--files", type=int, default=400)
    ap.add_argument("--bytes", type=int, default=530_000, help="a 512 x 512 CT slice: ~530 KB")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--dir", type=Path, default=None)
    a = ap.parse_args()
    data = os.urandom(a.bytes)
    root = Path(tempfile.mkdtemp(prefix="durable-write-", dir=a.dir))
    times: dict[str, list[float]] = {mode: [] for mode in MODES}
    try:
        for run in range(a.runs):
            for mode in MODES:
                os.sync()  # each way starts clean: no dirty pages left by the one before
                times[mode].append(write_files(root / f"{mode}{run}", a.files, data, mode))
                shutil.rmtree(root / f"{mode}{run}")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    base = statistics.median(times["plain"])
    print(f"{a.files} files of {a.bytes} bytes, median of {a.runs} interleaved runs:")
    for mode, what in MODES.items():
        t = statistics.median(times[mode])
        runs = ", ".join(f"{x:.2f}" for x in times[mode])
        print(f"  {what:44s} {t:6.2f} s  {base / t:5.2f}x plain  ({runs})")


if __name__ == "__main__":
    main()
