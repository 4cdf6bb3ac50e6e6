"""Latency benchmark: from the last C-STORE response to (i) every slice scored, (ii) the study
result stored, (iii) the SR accepted by a destination (DCMTK storescp), for a 40- and a
250-slice study sent at full speed to a node that has already resulted and reported one 8-slice
study (the inference process has loaded its model). stable_seconds is subtracted from (ii) and
(iii), so the numbers show ichnode's own overhead. With ``--cold`` the timed study is the
node's first, sent as soon as ``serve`` prints its ready line; "ready s" is then how long
``serve`` took to print it (from its start).

    python benchmarks/latency.py --sizes 40,250 --stable-seconds 1 [--cold]
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import pydicom
from pynetdicom import AE

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    DCMTK_ENV,
    free_port,
    machine,
    phantom_study,
    port_open,
    python,
    wait_for,
)


def _send(port: int, files: list[Path]) -> datetime:
    datasets = [pydicom.dcmread(f) for f in files]
    ae = AE(ae_title="LATENCY")
    ae.add_requested_context(datasets[0].SOPClassUID, datasets[0].file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title="ICHNODE")
    for ds in datasets:
        status = assoc.send_c_store(ds)
        assert status.Status == 0, hex(status.Status)
    last = datetime.now(UTC)
    assoc.release()
    return last


def _ts(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value).replace(tzinfo=UTC)


def run_once(
    files: list[Path], warmup: list[Path] | None, stable: float, workers: int
) -> tuple[float, float, float | None, float]:
    """Seconds from the last C-STORE response of ``files`` to all scored, result, SR sent,
    and from serve's start to its ready line; ``warmup``: a study sent (and reported) first,
    None to time the node's first study."""
    work = Path(tempfile.mkdtemp(prefix="latency-"))
    port, dest_port = free_port(), free_port()
    (work / "dest").mkdir()
    cfg = work / "ichnode.toml"
    cfg.write_text(
        f"port = {port}\nstable_seconds = {stable}\nworkers = {workers}\n"
        f'db_url = "sqlite:///{work / "ichnode.db"}"\nstore = "{work / "store"}"\n'
        f'[[destinations]]\nname = "storescp"\nae_title = "DEST"\nhost = "127.0.0.1"\n'
        f'port = {dest_port}\nobjects = ["sr"]\n'
    )
    dest = subprocess.Popen(
        ["/usr/bin/storescp", "-aet", "DEST", "-od", str(work / "dest"), str(dest_port)],
        env=DCMTK_ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    started = time.monotonic()
    node = subprocess.Popen(
        [python(), "-m", "ichnode", "--log-level", "WARNING", "serve", "--config", str(cfg)],
        cwd=work,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        for line in node.stdout:  # serve prints one line: ready
            if line.startswith("ichnode ready"):
                break
        ready = time.monotonic() - started
        wait_for(lambda: port_open(port) and port_open(dest_port), timeout=120)
        db = work / "ichnode.db"

        def query(sql: str):  # noqa: ANN202
            with sqlite3.connect(db) as conn:
                return conn.execute(sql).fetchone()

        def count(sql: str) -> int:
            return int(query(sql)[0])

        # A node runs for weeks: the timed study is its second (unless --cold). The warm-up
        # study opens the first SR's association.
        before = 0
        if warmup is not None:
            _send(port, warmup)
            wait_for(lambda: count("select count(*) from outbox where status='sent'") >= 1, 600)
            before = 1
        last = _send(port, files)
        wait_for(lambda: count("select count(*) from study_results") > before, timeout=600)
        result = query("select created_at from study_results order by id desc limit 1")
        scored = _ts(query("select max(completed_at) from instances")[0])
        resulted = _ts(result[0])
        sent = None
        try:
            wait_for(
                lambda: count("select count(*) from outbox where status='sent'") > before,
                timeout=60,
                interval=0.05,
            )
            row = query("select max(sent_at) from outbox where status='sent'")
            sent = (_ts(row[0]) - last).total_seconds() - stable
        except AssertionError:  # wait_for's timeout: nothing was sent
            pass
        scored_s = (scored - last).total_seconds()
        return scored_s, (resulted - last).total_seconds() - stable, sent, ready
    finally:
        for proc in (node, dest):
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="40,250")
    parser.add_argument("--stable-seconds", type=float, default=1.0)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument(
        "--cold", action="store_true", help="time the node's first study, sent once it is ready"
    )
    args = parser.parse_args()
    print(
        f"# latency after the last C-STORE response (stable_seconds={args.stable_seconds} "
        f"subtracted from result and SR), {args.workers} worker thread(s)"
        f"{', first study after the ready line' if args.cold else ''}"
    )
    print(f"# {machine()}, {time.strftime('%Y-%m-%d %H:%M')}")
    ready_column = f"{'ready s':>9}" if args.cold else ""
    print(f"{'slices':<8}{'all scored s':>14}{'result s':>10}{'SR accepted s':>15}{ready_column}")
    warmup = sorted(phantom_study(8, seed=999).glob("*.dcm"))
    for n in (int(x) for x in args.sizes.split(",")):
        files = sorted(phantom_study(n, seed=100 + n).glob("*.dcm"))
        first = None if args.cold else warmup
        scored, resulted, sent, ready = run_once(files, first, args.stable_seconds, args.workers)
        sr = "-" if sent is None else f"{sent:.2f}"
        ready_cell = f"{ready:>9.2f}" if args.cold else ""
        print(f"{n:<8}{scored:>14.2f}{resulted:>10.2f}{sr:>15}{ready_cell}")


if __name__ == "__main__":
    main()
