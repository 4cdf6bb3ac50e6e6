"""Ingest benchmark: the same slices sent by DCMTK storescu to three receivers.

(a) DCMTK storescp writing files, (b) pynetdicom's bundled storescp app writing files,
(c) ichnode serve with inference off (--workers 0), then on (--workers 1). Median of --runs
runs each, printed as instances/s, MB/s and ratios to (a). Run DCMTK with TCP_NODELAY=1.

    python benchmarks/ingest.py --slices 400 --runs 3
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    DCMTK_ENV,
    free_port,
    machine,
    median,
    phantom_slices,
    port_open,
    python,
    storescu,
    wait_for,
)


def _receiver(kind: str, port: int, out: Path) -> subprocess.Popen:
    if kind == "dcmtk":
        cmd = ["/usr/bin/storescp", "-aet", "STORESCP", "-od", str(out), str(port)]
        return subprocess.Popen(
            cmd, env=DCMTK_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
    if kind == "pynetdicom":
        cmd = [
            python(),
            "-m",
            "pynetdicom",
            "storescp",
            "-aet",
            "STORESCP",
            "-od",
            str(out),
            str(port),
        ]
        return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers = "0" if kind == "ichnode-off" else "1"
    cmd = [
        python(),
        "-m",
        "ichnode",
        "--log-level",
        "WARNING",
        "serve",
        "--port",
        str(port),
        "--ae-title",
        "STORESCP",
        "--workers",
        workers,
        "--stable-seconds",
        "3600",
        "--db-url",
        f"sqlite:///{out / 'ichnode.db'}",
        "--store",
        str(out / "store"),
    ]
    return subprocess.Popen(cmd, cwd=out, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _queue_left(out: Path) -> int:
    import sqlite3

    with sqlite3.connect(out / "ichnode.db") as conn:
        return conn.execute(
            "select count(*) from instances where status in ('queued','claimed')"
        ).fetchone()[0]


def measure(kind: str, folder: Path, runs: int, warmup: Path | None) -> dict[str, float]:
    times, drains, cold = [], [], []
    for _ in range(runs):
        out = Path(tempfile.mkdtemp(prefix=f"ingest-{kind}-"))
        port = free_port()
        proc = _receiver(kind, port, out)
        try:
            wait_for(lambda port=port: port_open(port), timeout=120)
            if warmup is not None:
                # A receiver that has just started pays one-time costs on its first instances
                # (imports, compiled statements, caches); a node runs for weeks. Every receiver
                # gets the same short warm-up study, untimed except as "first send".
                cold.append(storescu(port, warmup, "STORESCP") / len(list(warmup.glob("*.dcm"))))
                if kind == "ichnode-on":
                    wait_for(lambda out=out: _queue_left(out) == 0, timeout=600, interval=0.1)
            elapsed = storescu(port, folder, "STORESCP")
            times.append(elapsed)
            if kind == "ichnode-on":
                t0 = time.perf_counter()
                wait_for(lambda out=out: _queue_left(out) == 0, timeout=600, interval=0.1)
                drains.append(elapsed + time.perf_counter() - t0)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
            shutil.rmtree(out, ignore_errors=True)
    result = {"seconds": median(times)}
    if cold:
        result["warmup_ms_per_instance"] = 1000 * median(cold)
    if drains:
        result["drained_seconds"] = median(drains)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=400)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--warmup",
        type=int,
        default=20,
        help="slices sent (untimed) before each timed run; 0: none",
    )
    parser.add_argument(
        "--receivers",
        default="dcmtk,pynetdicom,ichnode-off,ichnode-on",
        help="comma-separated subset of dcmtk, pynetdicom, ichnode-off, ichnode-on",
    )
    args = parser.parse_args()
    folder = phantom_slices(args.slices)
    files = sorted(folder.glob("*.dcm"))
    mb = sum(f.stat().st_size for f in files) / 1e6
    print(
        f"# ingest: {len(files)} slices, {mb:.0f} MB, storescu over loopback, median of {args.runs}"
    )
    print(f"# {machine()}, {time.strftime('%Y-%m-%d %H:%M')}")
    warmup = phantom_slices(args.warmup, seed=999) if args.warmup else None
    print(f"# each receiver freshly started, then sent {args.warmup} warm-up slices (untimed)")
    results = {k: measure(k, folder, args.runs, warmup) for k in args.receivers.split(",")}
    base = results.get("dcmtk", {}).get("seconds")
    pyn = results.get("pynetdicom", {}).get("seconds")
    head = f"{'receiver':<14}{'seconds':>9}{'inst/s':>9}{'MB/s':>8}"
    print(f"{head}{'vs dcmtk':>10}{'vs pynetdicom':>15}")
    for kind, r in results.items():
        s = r["seconds"]
        ratio = f"{base / s:.2f}x" if base else "-"
        ratio_p = f"{pyn / s:.2f}x" if pyn else "-"
        print(f"{kind:<14}{s:>9.2f}{len(files) / s:>9.1f}{mb / s:>8.1f}{ratio:>10}{ratio_p:>15}")
        if "warmup_ms_per_instance" in r:
            first = r["warmup_ms_per_instance"]
            print(f"{'':<14}first (warm-up) send after start: {first:.1f} ms/slice")
        if "drained_seconds" in r:
            d = r["drained_seconds"]
            verdict = "keeps up" if d <= s * 1.05 else "backlog grows: inference slower than ingest"
            print(
                f"{'':<14}queue drained {d:.2f} s after the first slice: "
                f"{len(files) / d:.1f} slices/s scored ({verdict})"
            )


if __name__ == "__main__":
    main()
