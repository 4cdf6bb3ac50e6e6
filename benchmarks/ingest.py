"""Ingest benchmark: the same slices sent by DCMTK storescu to several receivers.

Receivers: DCMTK ``storescp`` writing files, Orthanc (its defaults, loopback only, temporary
storage), pynetdicom's bundled ``storescp`` app writing files, and ``ichnode serve`` with its
defaults (inference on: one worker in its own process; one receiver process per core),
optionally also with one receiver process (``ichnode-1rx``: ``receivers = 1``), with the worker
as a thread in the receiving process (``ichnode-thread``: ``receivers = 1``,
``inference_process = false``, the defaults before 2026-12-06), with the inference process at
the receivers' CPU priority (``ichnode-nice0``: ``inference_nice = 0``), with every message
through pynetdicom's queues (``ichnode-queues``: ``fast_store = false``) or with inference off
(``ichnode-off``: ``--workers 0``, one receiver process). ``--baseline DIR`` adds
``ichnode-baseline``: ``serve`` with its defaults run from the source tree DIR (e.g. a ``git
worktree`` of an older commit, put first on ``PYTHONPATH``), so a change is measured against
the code before it in the same run. ``--parallel 1,4`` measures each receiver with 1 and with 4
``storescu`` processes, each sending its share of the files on its own association. The untimed
warm-up is sent on 4 associations to every receiver, so that each of ichnode's receiver
processes is likely to have received before the timed run. Median of ``--runs`` runs each
(interleaved: every receiver's first run, then every second run in the reverse order, ...),
printed as instances/s, MB/s and the ratios ichnode/Orthanc and ichnode/storescp measured in
the same run. DCMTK runs with TCP_NODELAY=1. ``--cpu`` also prints the CPU seconds (user and
system, from ``/proc``) that the receiver's processes (it and its children) and the
``storescu`` senders used during the timed send: on a host whose cores the senders share,
what a receiver costs in CPU is what bounds it with several associations.

    python benchmarks/ingest.py --slices 400 --runs 2 --parallel 1,4 \
        --receivers dcmtk,orthanc,ichnode,ichnode-1rx
    git worktree add /tmp/before HEAD~1
    python benchmarks/ingest.py --parallel 1,4 --runs 5 --receivers orthanc,ichnode \
        --baseline /tmp/before
    python benchmarks/ingest.py --parallel 1,4 --runs 3 --receivers orthanc,ichnode --cpu
"""

from __future__ import annotations

import argparse
import json
import os
import resource
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
    wait_for,
)

ORTHANC = "/usr/sbin/Orthanc"
RECEIVERS = (
    "dcmtk",
    "orthanc",
    "pynetdicom",
    "ichnode",
    "ichnode-1rx",
    "ichnode-thread",
    "ichnode-off",
    "ichnode-nice0",
    "ichnode-queues",
    "ichnode-baseline",
)
#: Associations the warm-up is sent on.
WARMUP_ASSOCIATIONS = 4
#: Settings (environment) of each ichnode variant on top of ``serve``'s defaults.
ICHNODE_ENV = {
    "ichnode": {},
    "ichnode-1rx": {"ICHNODE_RECEIVERS": "1"},
    "ichnode-thread": {"ICHNODE_RECEIVERS": "1", "ICHNODE_INFERENCE_PROCESS": "false"},
    "ichnode-off": {"ICHNODE_RECEIVERS": "1"},
    "ichnode-nice0": {"ICHNODE_INFERENCE_NICE": "0"},
    "ichnode-queues": {"ICHNODE_FAST_STORE": "false"},
    "ichnode-baseline": {},  # PYTHONPATH set from --baseline
}


def _orthanc(port: int, out: Path) -> subprocess.Popen:
    """Orthanc with its defaults but for loopback ports and a temporary storage folder."""
    config = {
        "Name": "ingest-bench",
        "DicomAet": "STORESCP",
        "DicomPort": port,
        "HttpPort": free_port(),
        "StorageDirectory": str(out / "storage"),
        "IndexDirectory": str(out / "index"),
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomAlwaysAllowStore": True,
        "DicomCheckCalledAet": False,
        "Plugins": [],
    }
    path = out / "orthanc.json"
    path.write_text(json.dumps(config))
    # Orthanc is built on DCMTK: without TCP_NODELAY its replies stall ~45 ms on loopback.
    return subprocess.Popen(
        [ORTHANC, str(path)], env=DCMTK_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def _receiver(kind: str, port: int, out: Path) -> subprocess.Popen:
    if kind == "dcmtk":
        cmd = ["/usr/bin/storescp", "-aet", "STORESCP", "-od", str(out), str(port)]
        return subprocess.Popen(
            cmd, env=DCMTK_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
    if kind == "orthanc":
        return _orthanc(port, out)
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
        "--stable-seconds",
        "3600",
        "--db-url",
        f"sqlite:///{out / 'ichnode.db'}",
        "--store",
        str(out / "store"),
    ]
    if kind == "ichnode-off":
        cmd += ["--workers", "0"]
    # Its HTTP side on a free port too, so that a node already running here does not clash.
    env = {**os.environ, "ICHNODE_HTTP__BIND": f"127.0.0.1:{free_port()}", **ICHNODE_ENV[kind]}
    # Its ready line (stdout) says when every receiver process listens.
    return subprocess.Popen(
        cmd,
        cwd=out,
        env=env,
        stdout=(out / "serve.out").open("w"),
        stderr=subprocess.DEVNULL,
    )


def _ready(kind: str, port: int, out: Path) -> bool:
    if kind.startswith("ichnode"):
        log = out / "serve.out"
        return log.is_file() and "ichnode ready" in log.read_text()
    return port_open(port)


def send(port: int, files: list[Path], parallel: int) -> float:
    """Seconds until ``parallel`` storescu processes (one association each) sent ``files``."""
    shares = [files[i::parallel] for i in range(parallel)]
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen(
            ["/usr/bin/storescu", "-aec", "STORESCP", "127.0.0.1", str(port), *map(str, share)],
            env=DCMTK_ENV,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for share in shares
        if share
    ]
    errors = [p.communicate()[1] for p in procs if p.wait() != 0]
    elapsed = time.perf_counter() - t0
    if errors:
        raise RuntimeError(f"storescu failed: {errors[0].strip()[:500]}")
    return elapsed


def _queue_left(out: Path) -> int:
    import sqlite3

    with sqlite3.connect(out / "ichnode.db") as conn:
        return conn.execute(
            "select count(*) from instances where status in ('queued','claimed')"
        ).fetchone()[0]


def _process_tree(pid: int) -> set[int]:
    """``pid`` and its descendants, from ``/proc``."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int(
                    (entry / "stat").read_text().rsplit(")", 1)[1].split()[1]
                )
            except (OSError, ValueError, IndexError):
                continue
    tree, grew = {pid}, True
    while grew:
        more = {child for child, parent in parents.items() if parent in tree} - tree
        tree |= more
        grew = bool(more)
    return tree


def _cpu_seconds(pids: set[int]) -> dict[int, tuple[float, float]]:
    """(user, system) CPU seconds of each process of ``pids`` still running."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[pid] = (int(fields[11]) / tick, int(fields[12]) / tick)
    return out


def _timed_send(proc: subprocess.Popen, port: int, files: list[Path], parallel: int) -> dict:
    """:func:`send`, with the CPU seconds the receiver's process tree and the senders used."""
    pids = _process_tree(proc.pid)
    before, senders = _cpu_seconds(pids), resource.getrusage(resource.RUSAGE_CHILDREN)
    elapsed = send(port, files, parallel)
    after, senders_after = _cpu_seconds(pids), resource.getrusage(resource.RUSAGE_CHILDREN)
    both = [p for p in after if p in before]
    return {
        "seconds": elapsed,
        "user": sum(after[p][0] - before[p][0] for p in both),
        "system": sum(after[p][1] - before[p][1] for p in both),
        "senders": senders_after.ru_utime + senders_after.ru_stime
        - senders.ru_utime - senders.ru_stime,
    }  # fmt: skip


def measure(kind: str, files: list[Path], runs: int, warmup: list[Path], parallel: int) -> dict:
    times, drains, cpu = [], [], []
    off = kind == "ichnode-off" or ICHNODE_ENV.get(kind, {}).get("ICHNODE_WORKERS") == "0"
    inference = kind.startswith("ichnode") and not off
    for _ in range(runs):
        out = Path(tempfile.mkdtemp(prefix=f"ingest-{kind}-"))
        port = free_port()
        proc = _receiver(kind, port, out)
        try:
            wait_for(lambda port=port, out=out: _ready(kind, port, out), timeout=120)
            if warmup:
                # A receiver that has just started pays one-time costs on its first instances
                # (imports, compiled statements, caches); a node runs for weeks. Every receiver
                # gets the same short warm-up, untimed.
                send(port, warmup, WARMUP_ASSOCIATIONS)
                if inference:
                    wait_for(lambda out=out: _queue_left(out) == 0, timeout=600, interval=0.1)
            timed = _timed_send(proc, port, files, parallel)
            elapsed = timed["seconds"]
            times.append(elapsed)
            cpu.append(timed)
            if inference:
                t0 = time.perf_counter()
                wait_for(lambda out=out: _queue_left(out) == 0, timeout=600, interval=0.1)
                drains.append(elapsed + time.perf_counter() - t0)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
            shutil.rmtree(out, ignore_errors=True)
    result = {"seconds": median(times)}
    for key in ("user", "system", "senders"):
        result[key] = median([c[key] for c in cpu])
    if drains:
        result["drained_seconds"] = median(drains)
    return result


def _median_of(results: list[dict]) -> dict:
    return {key: median([r[key] for r in results]) for key in results[0]}


def report(results: dict[str, dict], n: int, mb: float, parallel: int, cpu: bool = False) -> None:
    """One table: instances/s, MB/s, and ichnode's ratios to Orthanc and storescp; with ``cpu``
    the receiver's CPU seconds (user + system) and the senders'."""
    print(f"\n## {parallel} association{'s' if parallel > 1 else ''} ({parallel} x storescu)")
    extra = f"{'cpu user':>10}{'system':>8}{'senders':>9}" if cpu else ""
    print(f"{'receiver':<18}{'seconds':>9}{'inst/s':>9}{'MB/s':>8}{extra}")
    for kind, r in results.items():
        s = r["seconds"]
        extra = f"{r['user']:>10.2f}{r['system']:>8.2f}{r['senders']:>9.2f}" if cpu else ""
        print(f"{kind:<18}{s:>9.2f}{n / s:>9.1f}{mb / s:>8.1f}{extra}")
        if "drained_seconds" in r:
            d = r["drained_seconds"]
            verdict = "keeps up" if d <= s * 1.05 else "backlog: inference slower than ingest"
            print(f"{'':<18}queue drained after {d:.2f} s: {n / d:.1f} slices/s scored ({verdict})")
    for ours in [k for k in RECEIVERS if k.startswith("ichnode")]:
        if ours not in results:
            continue
        for peer in ("orthanc", "dcmtk"):
            if peer in results:
                ratio = results[peer]["seconds"] / results[ours]["seconds"]
                print(f"{ours}/{peer}: {ratio:.2f}x (instances/s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=400)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--parallel",
        default="1",
        help="comma-separated numbers of concurrent storescu processes (associations), e.g. 1,4",
    )
    parser.add_argument(
        "--warmup", type=int, default=20, help="slices sent (untimed) before each timed run"
    )
    parser.add_argument(
        "--receivers",
        default="dcmtk,orthanc,pynetdicom,ichnode",
        help=f"comma-separated subset of {', '.join(RECEIVERS)}",
    )
    parser.add_argument(
        "--cpu",
        action="store_true",
        help="also print the CPU seconds of the receiver's processes and of the senders",
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        help="also measure ichnode-baseline: serve run from this source tree (an older commit)",
    )
    args = parser.parse_args()
    kinds = args.receivers.split(",")
    if args.baseline is not None:
        if not (args.baseline / "ichnode" / "__init__.py").is_file():
            parser.error(f"--baseline {args.baseline}: no ichnode package there")
        ICHNODE_ENV["ichnode-baseline"] = {"PYTHONPATH": str(args.baseline.resolve())}
        kinds = [k for k in kinds if k != "ichnode-baseline"] + ["ichnode-baseline"]
    elif "ichnode-baseline" in kinds:
        parser.error("ichnode-baseline needs --baseline DIR")
    unknown = set(kinds) - set(RECEIVERS)
    if unknown:
        parser.error(f"unknown receivers: {', '.join(sorted(unknown))}")
    files = sorted(phantom_slices(args.slices).glob("*.dcm"))
    mb = sum(f.stat().st_size for f in files) / 1e6
    warmup = sorted(phantom_slices(args.warmup, seed=999).glob("*.dcm")) if args.warmup else []
    print(f"# ingest: {len(files)} slices (512 x 512, 16-bit), {mb:.0f} MB, storescu over loopback")
    print(f"# median of {args.runs}; each receiver freshly started, {args.warmup} warm-up slices")
    print(f"# {machine()}, {time.strftime('%Y-%m-%d %H:%M')}")
    for parallel in (int(p) for p in args.parallel.split(",")):
        # Interleaved: run i of every receiver, then run i + 1 in the reverse order, so that a
        # host whose speed drifts (a neighbour's load) weighs on every receiver alike.
        runs: dict[str, list[dict]] = {k: [] for k in kinds}
        for i in range(args.runs):
            for k in kinds if i % 2 == 0 else kinds[::-1]:
                runs[k].append(measure(k, files, 1, warmup, parallel))
        results = {k: _median_of(r) for k, r in runs.items()}
        report(results, len(files), mb, parallel, cpu=args.cpu)


if __name__ == "__main__":
    main()
