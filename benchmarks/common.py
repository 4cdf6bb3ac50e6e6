"""Helpers shared by the benchmark scripts (not a test module).

Free ports, polling and the DCMTK environment are the tests' own (``tests/helpers.py``),
imported rather than copied.
"""

from __future__ import annotations

import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers import DCMTK_ENV, free_port, wait_for  # noqa: E402

__all__ = ["DCMTK_ENV", "free_port", "wait_for"]  # and the benchmarks' own below

BENCH_DIR = Path(os.environ.get("ICHNODE_BENCH_DIR", "/tmp/ichnode-bench"))


def machine() -> str:
    return (
        f"{platform.node()} {platform.machine()} {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}"
    )


def port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def phantom_slices(n: int, size: int = 512, seed: int = 1) -> Path:
    """``n`` phantom slices (valid UIDs, 16-bit) in a folder, made once and reused."""
    from phantoms.synth import synth_study

    folder = BENCH_DIR / f"slices-{n}-{size}-{seed}"
    if folder.is_dir() and len(list(folder.glob("*.dcm"))) == n:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    written, study = 0, 0
    while written < n:
        per = min(40, n - written)
        for s in synth_study(seed + study, n_slices=max(per, 24), size=size, valid_uids=True)[:per]:
            s.dataset.save_as(folder / f"{written:05d}.dcm", enforce_file_format=True)
            written += 1
        study += 1
    return folder


def phantom_study(n: int, size: int = 512, seed: int = 1) -> Path:
    """One phantom study of ``n`` slices in a folder, made once and reused."""
    from phantoms.synth import synth_study

    folder = BENCH_DIR / f"study-{n}-{size}-{seed}"
    if folder.is_dir() and len(list(folder.glob("*.dcm"))) == n:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    for i, s in enumerate(synth_study(seed, n_slices=n, size=size, valid_uids=True)):
        s.dataset.save_as(folder / f"{i:05d}.dcm", enforce_file_format=True)
    return folder


def storescu(port: int, folder: Path, aec: str) -> float:
    """Seconds DCMTK storescu takes to send every file in ``folder`` on one association."""
    t0 = time.perf_counter()
    done = subprocess.run(
        ["/usr/bin/storescu", "-aec", aec, "+sd", "127.0.0.1", str(port), str(folder)],
        env=DCMTK_ENV,
        capture_output=True,
        text=True,
    )
    elapsed = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"storescu failed: {done.stderr.strip()[:500]}")
    return elapsed


def median(values: list[float]) -> float:
    return statistics.median(values)


def python() -> str:
    return sys.executable
