"""Scale-out benchmark: one pre-filled PostgreSQL queue drained by 1 and by 2 `ichnode worker`
processes (torch threads set per worker), as a ratio.

The queue holds --slices instances; their files are --files distinct 512x512 phantom slices in
a store (instances share files round-robin, so page-cache effects are equal for every run).

    python benchmarks/scaleout.py --slices 2000 --files 400
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy import create_engine, text

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, phantom_slices, python  # noqa: E402

if "ICHNODE_BENCH_POSTGRES" in os.environ:  # the server to use, as the tests' variable
    os.environ["ICHNODE_TEST_POSTGRES_URL"] = os.environ["ICHNODE_BENCH_POSTGRES"]
from db_fixtures import create_postgres_database, drop_postgres_database  # noqa: E402

from ichnode.db import make_engine, make_sessionmaker, upgrade  # noqa: E402
from ichnode.db.ingest import Received, record_instance  # noqa: E402
from ichnode.db.models import utcnow  # noqa: E402

#: Fewer slices than this are scored in one or two batches: no steady state to time.
MIN_SLICES = 200


def prefill(url: str, store: Path, files: list[Path], n: int) -> None:
    upgrade(url)
    engine = make_engine(url)
    sessions = make_sessionmaker(engine)
    rel = []
    for i, f in enumerate(files):
        dest = store / "bench" / f"{i}.dcm"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, dest)
        rel.append(f"bench/{i}.dcm")
    with sessions.begin() as s:
        for i in range(n):
            record_instance(
                s,
                Received(
                    f"1.2.826.0.1.3680043.10.{i // 40}",
                    f"1.2.826.0.1.3680043.11.{i // 40}",
                    f"1.2.826.0.1.3680043.12.{i}",
                    "1.2.840.10008.5.1.4.1.1.2",
                    "1.2.840.10008.1.2.1",
                    utcnow(),
                    z=float(i),
                    path=rel[i % len(rel)],
                ),
                skip_duplicate_positions=False,
            )
    engine.dispose()


def drain(url: str, store: Path, workers: int, threads: int) -> float:
    cmd = [
        python(),
        "-m",
        "ichnode",
        "--log-level",
        "WARNING",
        "worker",
        "--db-url",
        url,
        "--store",
        str(store),
        "--torch-threads",
        str(threads),
        "--exit-when-empty",
        "--batch-size",
        "32",
    ]
    t0 = time.perf_counter()
    procs = [subprocess.Popen(cmd, stdout=subprocess.DEVNULL) for _ in range(workers)]
    for p in procs:
        if p.wait() != 0:
            raise RuntimeError("a worker failed")
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=2000)
    parser.add_argument("--files", type=int, default=400)
    args = parser.parse_args()
    if args.slices < MIN_SLICES:  # fewer finish in one batch: no steady state to time
        parser.error(f"--slices must be at least {MIN_SLICES}")
    files = sorted(phantom_slices(args.files).glob("*.dcm"))
    print(f"# scale-out: {args.slices} queued slices on PostgreSQL, `ichnode worker` processes")
    print(f"# {machine()}, {time.strftime('%Y-%m-%d %H:%M')}")
    results = {}
    for workers, threads in ((1, 1), (1, 2), (2, 1)):
        url = create_postgres_database()
        store = Path(tempfile.mkdtemp(prefix="bench-store-"))
        try:
            prefill(url, store, files, args.slices)
            seconds = drain(url, store, workers, threads)
            check = create_engine(url)
            with check.connect() as c:
                done = c.execute(text("select count(*) from predictions")).scalar()
                span = c.execute(
                    text(
                        "select extract(epoch from max(completed_at) - min(completed_at)) "
                        "from instances"
                    )
                ).scalar()
                dup = c.execute(
                    text(
                        "select count(*) from (select instance_id from predictions "
                        "group by instance_id having count(*) > 1) d"
                    )
                ).scalar()
            check.dispose()
            assert done == args.slices and dup == 0, (done, dup)
            # Steady state: from the first to the last completion (process start-up excluded).
            steady = float(span or 0.0)
            if steady <= 0.0:
                raise SystemExit("every slice finished at once: give more --slices")
            results[(workers, threads)] = steady
            print(
                f"{workers} worker(s) x {threads} torch thread(s): {seconds:7.1f} s wall, "
                f"steady {args.slices / steady:6.1f} slices/s (each scored once: {done})"
            )
        finally:
            drop_postgres_database(url)
            shutil.rmtree(store, ignore_errors=True)
    one = results[(1, 1)]
    two = results[(2, 1)]
    print(f"ratio 2 workers / 1 worker (1 thread each, steady state): {one / two:.2f}x")
    print(f"ratio 2 workers x 1 thread / 1 worker x 2 threads: {results[(1, 2)] / two:.2f}x")


if __name__ == "__main__":
    main()
