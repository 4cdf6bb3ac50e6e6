"""Training data path: images/s of a first epoch (DICOM decode + preprocess + cache write)
against a later epoch (cached float16 arrays), on phantoms.

    python benchmarks/train_data_path.py --studies 20 --size 256 --image-size 128

Only the data path is timed (the loader's batches are consumed, no model runs), so the ratio
shows what the cache saves whatever the network costs.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

from ichnode.imaging import PreprocessSpec
from phantoms.synth import generate
from training.cache import PreprocessCache
from training.dataset import RSNADataset, find_layout, load_labels
from training.loop import make_loader


def epoch_rate(ds: RSNADataset, batch_size: int, workers: int) -> float:
    """Images per second of one pass over ``ds``."""
    t0 = time.perf_counter()
    n = sum(len(x) for x, *_ in make_loader(ds, batch_size, workers, None))
    return n / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=20)
    parser.add_argument("--size", type=int, default=256, help="phantom rows/columns")
    parser.add_argument("--image-size", type=int, default=128, help="model input size")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "phantoms"
        generate(data, studies=args.studies, seed=args.seed, size=args.size, progress=False)
        layout = find_layout(data)
        table = load_labels(layout.csv)
        spec = PreprocessSpec(size=args.image_size)
        cache = PreprocessCache(Path(tmp) / "cache", spec)
        ds = RSNADataset.from_table(layout, table, list(table.index), spec, cache)
        first = epoch_rate(ds, args.batch_size, args.workers)
        later = epoch_rate(ds, args.batch_size, args.workers)
    print(
        f"{len(ds)} slices {args.size}px -> {args.image_size}px, workers={args.workers}: "
        f"first epoch (DICOM) {first:.0f} images/s, later epoch (cache) {later:.0f} images/s, "
        f"ratio {later / first:.1f}x"
    )


if __name__ == "__main__":
    main()
