"""Where ``ichnode serve`` spends a C-STORE: py-spy over one timed ``storescu`` send.

Starts ``ichnode serve`` as ``benchmarks/ingest.py`` does (``ichnode-1rx``: its defaults but
one receiver process, so that every association is in the process py-spy watches; inference
on, in its own process; ``--off``: ``--workers 0``), waits for its ready line, warms it up with
20 other slices, then attaches ``py-spy record --threads`` to it for exactly the timed send of
``--slices`` slices (one DCMTK ``storescu`` association, ``--parallel N`` for N; with
``TCP_NODELAY=1``). Prints, per thread kind, its share of all samples (``--gil``: only while
holding the GIL, i.e. Python's own time) and, for the thread that runs the C-STORE handler (the
DUL reader on the fast path, ``node.fast_store``; the association's thread on pynetdicom's),
the inclusive share of the functions that matter. ``--raw DIR`` keeps py-spy's collapsed
stacks (flamegraph.pl reads them).

    pip install -e ".[bench]"      (py-spy)
    python benchmarks/ingest_profile.py --slices 400 [--off] [--parallel 2] [--gil]
"""

from __future__ import annotations

import argparse
import collections
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import free_port, phantom_slices, wait_for  # noqa: E402
from ingest import _queue_left, _ready, _receiver, send  # noqa: E402

#: Functions whose inclusive share of the association thread's samples is printed, in order.
WATCH = (
    "FastStore.read_pdu",
    "FastStore._read_one",
    "FastStore._next_arrives",
    "StorageSCP.handle_fast",
    "StorageSCP.handle_store",
    "admit_encoded",
    "admit (",
    "C_STORE.dataset",
    "Event.dataset",
    "check (",
    "pixel_problem",
    "describe (",
    "StorageSCP._store",
    "StoreRequest.file_meta",
    "Event.file_meta",
    "encode_file_meta",
    "Event.encoded_dataset",
    "keep (",
    "mark_duplicate",
    "Store.write",
    "_fsync_dir",
    "record_instance",
    "Session.commit",
    "send_c_store_rsp",
    "send_msg",
)


def thread_kind(name: str) -> str:
    """Name a sampled thread by its Python thread name (the association's is
    ``AcceptorThread@...``, its DUL reader ``Thread-N (run_reactor)``)."""
    if name.startswith("AcceptorThread"):
        return "association (C-STORE handler)"
    if "(run_reactor)" in name:
        return "DUL reader"
    return name.split(" (")[0] if name.startswith("Thread-") else name


def _samples(raw: Path):  # noqa: ANN202 - yields (thread kind, stack, count)
    for line in raw.read_text().splitlines():
        stack_text, _, count_text = line.rpartition(" ")
        if stack_text:
            thread, *stack = stack_text.split(";")
            yield thread_kind(thread.partition(": ")[2]), stack, int(count_text)


def summarise(wall: Path, cpu: Path, seconds: float, rate: int) -> None:
    """Print, from py-spy's raw (collapsed) output, the CPU each thread used (``cpu``: idle
    samples left out) and where the association thread's wall-clock time went (``wall``)."""
    busy: collections.Counter[str] = collections.Counter()
    for kind, _, count in _samples(cpu):
        busy[kind] += count
    print(f"\nCPU by thread (share of one core over the {seconds:.1f} s sampled):")
    for kind, n in busy.most_common(8):
        print(f"  {kind:<40}{100 * n / (seconds * rate):6.1f} %")
    # The thread that runs the C-STORE handler: the DUL reader on the fast path
    # (node.fast_store), the association's thread on pynetdicom's.
    fast = any("handle_fast" in f for kind, stack, _ in _samples(cpu) for f in stack)
    handler = "DUL reader" if fast else "association"
    total = 0
    watched: collections.Counter[str] = collections.Counter()
    for kind, stack, count in _samples(wall):
        if kind.startswith(handler):
            total += count
            for name in WATCH:
                if any(name in frame for frame in stack):
                    watched[name] += count
    print(
        f"\n{handler} thread (runs the C-STORE handler), wall clock: inclusive share of its "
        f"{total} samples:"
    )
    for name in WATCH:
        if watched[name]:
            print(f"  {name:<32}{100 * watched[name] / max(total, 1):6.1f} %")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=400)
    parser.add_argument("--off", action="store_true", help="inference off (--workers 0)")
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--raw", type=Path, help="a folder to keep py-spy's collapsed stacks in")
    parser.add_argument(
        "--parallel", type=int, default=1, help="associations the slices are sent over"
    )
    parser.add_argument(
        "--gil",
        action="store_true",
        help="CPU samples only of threads holding the GIL (Python's own time, no system calls)",
    )
    args = parser.parse_args()
    files = sorted(phantom_slices(args.slices).glob("*.dcm"))
    warmup = sorted(phantom_slices(20, seed=999).glob("*.dcm"))
    # One receiver process (the one py-spy watches); the workers in their own process.
    kind = "ichnode-off" if args.off else "ichnode-1rx"
    out = Path(tempfile.mkdtemp(prefix="ingest-profile-"))
    keep = args.raw or out
    keep.mkdir(parents=True, exist_ok=True)
    wall, cpu = keep / f"{kind}-wall.raw", keep / f"{kind}-cpu.raw"
    port = free_port()
    proc = _receiver(kind, port, out)
    try:
        # The ready line, not the open port: serve imports its web side after the port
        # listens, which a profile started at the port would count.
        wait_for(lambda: _ready(kind, port, out), timeout=120)
        send(port, warmup, 1)
        spies = [
            subprocess.Popen(
                ["py-spy", "record", "--threads", "--nonblocking", "-r", str(args.rate)]
                + ["-f", "raw", "-o", str(path), "--pid", str(proc.pid), *extra],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for path, extra in ((wall, ["--idle"]), (cpu, ["--gil"] if args.gil else []))
        ]
        time.sleep(1.0)  # py-spy attaches
        t0 = time.perf_counter()
        elapsed = send(port, files, args.parallel)
        if not args.off:
            wait_for(lambda: _queue_left(out) == 0, timeout=600, interval=0.1)
        sampled = time.perf_counter() - t0 + 1.0
        for spy in spies:
            spy.send_signal(signal.SIGINT)
            spy.wait(60)
        print(f"{len(files)} slices in {elapsed:.2f} s ({len(files) / elapsed:.0f}/s), {kind}")
        summarise(wall, cpu, sampled, args.rate)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        if args.raw is None:
            shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
