"""Ways to make a study's ``any`` from one forward pass, compared on the same studies.

    python benchmarks/study_aggregation.py --data sel25 [--model CKPT] [--against head]
    python benchmarks/study_aggregation.py --scores OUT/scores.npz     (again, no model)

Scores every slice of ``--data`` with the checkpoint (default: the demo model) once, keeps the
raw slice logits, the study model's refined ones and its study logit (``--out/scores.npz``),
then ranks the studies by each parameter-free aggregation below and prints its
study AUC(any), the specificity at 95 % sensitivity on the same studies, and its paired
difference to ``--against`` with the paired bootstrap interval of
:func:`training.metrics.paired_auc_difference`. Choosing among them on one set and confirming
on another is the point: on a few hundred studies the differences are noise.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # training/ beside ichnode/

from training import metrics  # noqa: E402
from training.calibrate import sensitivity_threshold  # noqa: E402

#: Column of ``any`` in the logits.
ANY = 5
Study = dict[str, np.ndarray]


def _top_mean(values: np.ndarray, k: int) -> float:
    return float(np.sort(values)[::-1][:k].mean())


def _pair_min(values: np.ndarray) -> float:
    """The highest score two neighbouring slices both reach."""
    if len(values) < 2:
        return float(values.max())
    return float(np.minimum(values[:-1], values[1:]).max())


#: name -> study score from the study's raw (L, 6), refined (L, 6) logits and study logits (6,).
AGGREGATIONS: dict[str, Callable[[Study], float]] = {
    "head": lambda s: float(s["study"][ANY]),
    "max raw": lambda s: float(s["raw"][:, ANY].max()),
    "max refined": lambda s: float(s["refined"][:, ANY].max()),
    "top-2 raw": lambda s: _top_mean(s["raw"][:, ANY], 2),
    "top-3 raw": lambda s: _top_mean(s["raw"][:, ANY], 3),
    "top-2 refined": lambda s: _top_mean(s["refined"][:, ANY], 2),
    "neighbour pair": lambda s: _pair_min(s["raw"][:, ANY]),
    "head + max refined": lambda s: (
        (float(s["study"][ANY]) + float(s["refined"][:, ANY].max())) / 2.0
    ),
}


def score(data: Path, model: Path | None, cache: Path) -> dict[str, np.ndarray]:
    """Per study (z order): raw and refined slice logits, study logits, study label of any."""
    from ichnode.device import resolve_device
    from ichnode.model import demo_model_path, load_checkpoint
    from ichnode.study import run_study_head
    from training.dataset import RSNADataset, find_layout, header_index, load_labels
    from training.loop import make_loader
    from training.study import embed_dataset, group_studies

    layout = find_layout(data)
    ckpt = load_checkpoint(model or demo_model_path(), device=resolve_device("cpu"))
    if ckpt.study is None:
        raise SystemExit("the checkpoint has no study model: nothing to compare its head with")
    table = load_labels(layout.csv)
    ids = list(table.index)
    index = header_index(layout, ids, cache, progress=True)
    index = index[index["readable"].astype(bool)]
    readable = [i for i in ids if i in set(index["id"])]
    ds = RSNADataset.from_table(layout, table, readable, ckpt.spec, index=index)
    dev = next(ckpt.model.parameters()).device
    skipped = set(ids) - set(readable)
    loader = make_loader(ds, 64, 0, None)
    seen, emb, logits, y = embed_dataset(ckpt.model, loader, ckpt.spec, dev, skipped)
    studies = group_studies(index, seen, emb, logits, y)
    raw, refined, study, label, lengths = [], [], [], [], []
    for e, logits, ys in zip(studies.emb, studies.logits, studies.y, strict=True):
        ref, st = run_study_head(ckpt.study, e, logits)  # group_studies orders by z
        raw.append(logits)
        refined.append(ref)
        study.append(st)
        label.append(int(ys[:, ANY].max()))
        lengths.append(len(e))
    return {
        "raw": np.concatenate(raw),
        "refined": np.concatenate(refined),
        "study": np.stack(study),
        "label": np.array(label),
        "lengths": np.array(lengths),
    }


def studies_of(scores: dict[str, np.ndarray]) -> list[Study]:
    bounds = np.cumsum(np.r_[0, scores["lengths"]])
    return [
        {"raw": scores["raw"][a:b], "refined": scores["refined"][a:b], "study": scores["study"][i]}
        for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:], strict=True))
    ]


def specificity_at(y: np.ndarray, s: np.ndarray) -> float:
    """Specificity at the operating point's rule (sensitivity >= 0.95) on these studies."""
    return float((s[y == 0] < sensitivity_threshold(y, s)).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, help="folder in the RSNA layout (phantoms)")
    parser.add_argument("--model", type=Path, help="checkpoint (default: the demo model)")
    parser.add_argument(
        "--out", type=Path, help="folder for scores.npz (default: ./study-aggregation)"
    )
    parser.add_argument("--scores", type=Path, help="a scores.npz written before: no model run")
    parser.add_argument("--against", default="head", choices=sorted(AGGREGATIONS))
    args = parser.parse_args()
    if args.scores:
        scores = dict(np.load(args.scores))
    elif args.data:
        out = args.out or Path("study-aggregation")
        out.mkdir(parents=True, exist_ok=True)
        scores = score(args.data, args.model, out / ".index")
        np.savez_compressed(out / "scores.npz", **scores)
    else:
        parser.error("give --data (and --model) or --scores")
    y = scores["label"]
    studies = studies_of(scores)
    by = {name: np.array([f(s) for s in studies]) for name, f in AGGREGATIONS.items()}
    print(f"{len(y)} studies, {int(y.sum())} bleeding; differences against '{args.against}'")
    print(f"{'aggregation':<20}{'study AUC':>10}{'spec@0.95':>10}   paired difference (95 % CI)")
    for name, s in by.items():
        paired = metrics.paired_auc_difference(y, by[args.against], s)
        diff = "n/a"
        if paired is not None:
            diff = f"{paired[0]:+.4f} ({paired[1]:+.4f} to {paired[2]:+.4f})"
        auc = metrics.safe_auc(y, s)
        print(f"{name:<20}{auc:>10.4f}{specificity_at(y, s):>10.3f}   {diff}")


if __name__ == "__main__":
    main()
