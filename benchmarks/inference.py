"""Inference benchmark: slices/s by batch size, and time per stage.

Stages: read (file → bytes), decode (pydicom parse + pixel decode), preprocess (HU + windows +
resize), forward (model on the device), DB write (complete_many on SQLite). Runs unchanged on
CUDA when available (--device cuda).

    python benchmarks/inference.py --slices 256 --device auto
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, phantom_slices  # noqa: E402

from ichnode.db import make_engine, make_sessionmaker, upgrade  # noqa: E402
from ichnode.db.queue import Completion, claim, complete_many  # noqa: E402
from ichnode.imaging import hu_to_input, to_hu  # noqa: E402
from ichnode.inference import Predictor  # noqa: E402


def _db_write_seconds(n: int, batch: int) -> float:
    """Seconds to complete ``n`` claimed instances in batches on a fresh SQLite file."""
    from ichnode.db.ingest import Received, record_instance
    from ichnode.db.models import utcnow

    folder = Path(tempfile.mkdtemp(prefix="bench-db-"))
    url = f"sqlite:///{folder / 'q.db'}"
    upgrade(url)
    sessions = make_sessionmaker(make_engine(url))
    with sessions.begin() as s:
        for i in range(n):
            uid = f"1.2.826.0.1.3680043.9.{i}"
            record_instance(
                s,
                Received(
                    f"1.2.3.{i % 5}",
                    f"1.2.4.{i % 5}",
                    uid,
                    "1.2.840.10008.5.1.4.1.1.2",
                    "1.2.840.10008.1.2.1",
                    utcnow(),
                    z=float(i),
                ),
            )
    total = 0.0
    while True:
        with sessions.begin() as s:
            got = [(i.id, i.claim_token) for i in claim(s, "bench", batch, 60)]
        if not got:
            break
        t0 = time.perf_counter()
        with sessions.begin() as s:
            complete_many(s, [Completion(i, t, "m", [0.1] * 6) for i, t in got])
        total += time.perf_counter() - t0
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=256)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--model", default=None)
    parser.add_argument("--batches", default="1,8,32,64")
    args = parser.parse_args()
    files = sorted(phantom_slices(args.slices).glob("*.dcm"))
    predictor = Predictor(args.model, args.device)
    spec = predictor.checkpoint.spec
    print(
        f"# inference: {len(files)} slices 512x512, model {predictor.model_id}, "
        f"input {spec.size}px x{spec.channels}, device {predictor.device}, "
        f"torch threads {torch.get_num_threads()}"
    )
    print(f"# {machine()}, {time.strftime('%Y-%m-%d %H:%M')}")

    # Stage timings over all files (per slice).
    t = {"read": 0.0, "decode": 0.0, "preprocess": 0.0}
    inputs = []
    for f in files:
        t0 = time.perf_counter()
        raw = f.read_bytes()
        t1 = time.perf_counter()
        ds = pydicom.dcmread(io.BytesIO(raw))
        hu = to_hu(ds)
        t2 = time.perf_counter()
        inputs.append(hu_to_input(hu, spec))
        t3 = time.perf_counter()
        t["read"] += t1 - t0
        t["decode"] += t2 - t1
        t["preprocess"] += t3 - t2
    batch_all = np.stack(inputs)
    print(f"{'stage':<12}{'ms/slice':>10}")
    for k, v in t.items():
        print(f"{k:<12}{1000 * v / len(files):>10.2f}")
    rows = []
    for b in (int(x) for x in args.batches.split(",")):
        predictor.scores(batch_all[:b])  # warm-up
        if predictor.device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for i in range(0, len(batch_all), b):
            predictor.scores(batch_all[i : i + b])
        if predictor.device.type == "cuda":
            torch.cuda.synchronize()
        fwd = time.perf_counter() - t0
        db = _db_write_seconds(len(files), b)
        per = (sum(t.values()) + fwd + db) / len(files)
        rows.append((b, 1000 * fwd / len(files), 1000 * db / len(files), 1 / per))
    print(
        f"{'batch':<8}{'forward ms/slice':>18}{'db write ms/slice':>19}{'end-to-end slices/s':>21}"
    )
    for b, f_ms, d_ms, sps in rows:
        print(f"{b:<8}{f_ms:>18.2f}{d_ms:>19.2f}{sps:>21.1f}")


if __name__ == "__main__":
    main()
