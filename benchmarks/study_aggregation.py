"""Ways to make a study's ``any`` from one forward pass, compared on the same studies.

    python benchmarks/study_aggregation.py --data sel25 [--model CKPT] [--against head]
    python benchmarks/study_aggregation.py --scores OUT/scores.npz     (again, no model)
    python benchmarks/study_aggregation.py --data sel25 --flip          (+ mirrored inputs)
    python benchmarks/study_aggregation.py --pair OLD.npz,... NEW.npz,...  (two models)
    python benchmarks/study_aggregation.py --pair A.npz A.npz:flip        (mirrored or not)
    python benchmarks/study_aggregation.py --pair OLD.npz,.. NEW.npz,.. --models OLD.st NEW.st
    python benchmarks/study_aggregation.py --pair OLD.npz,.. NEW.npz,.. --raw  (slice networks)
    python benchmarks/study_aggregation.py --pair OLD.npz NEW.npz --new-aggregation "max refined"
    python benchmarks/study_aggregation.py --pair OLD.npz,.. NEW.npz,.. --ensemble  (both at once)

Scores every slice of ``--data`` with the checkpoint (default: the demo model) once, keeps the
raw slice logits, the study model's refined ones and its study logit (``--out/scores.npz``),
then ranks the studies by each parameter-free aggregation below and prints its
study AUC(any), the specificity at 95 % sensitivity on the same studies, and its paired
difference to ``--against`` with the paired bootstrap interval of
:func:`training.metrics.paired_auc_difference`. Choosing among them on one set and confirming
on another is the point: on a few hundred studies the differences are noise.

``--flip`` also scores every slice's left-right mirror and keeps, beside the plain scores,
those of the mean of the two embeddings (test-time augmentation; the aggregations are then
printed for both). ``--pair`` compares two models' ``scores.npz`` of the same studies, pooled
over the sets given (comma-separated, in the same order): the paired study AUC(any) difference
of the study model's head (the node's flag), and the slice AUC differences; with ``--models``
(the two checkpoints the scores came from) also each one's flag at its shipped operating point
(the study calibration and threshold of ``any``, as :func:`ichnode.triage.over_threshold`
applies them): sensitivity and specificity on the pooled studies; with ``--raw`` the slice
networks alone are compared (the maximum raw slice logit of ``any`` as the study's, the raw
slice AUCs), which is how a checkpoint without a study model is judged (its scores keep the
raw logits as the refined ones and their maximum as the study's).
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


def _above_median(values: np.ndarray) -> float:
    """The highest score less the study's median: what stands out of the study's own level
    (a noisier scanner raises every slice's score, a bleed only a few slices')."""
    return float(values.max() - np.median(values))


def _robust_z(values: np.ndarray) -> float:
    """The highest score in units of the study's own spread (median absolute deviation)."""
    mad = 1.4826 * float(np.median(np.abs(values - np.median(values))))
    return _above_median(values) / max(mad, 0.05)


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
    "max - median raw": lambda s: _above_median(s["raw"][:, ANY]),
    "max - median refined": lambda s: _above_median(s["refined"][:, ANY]),
    "head - median refined": lambda s: float(s["study"][ANY] - np.median(s["refined"][:, ANY])),
    "robust z raw": lambda s: _robust_z(s["raw"][:, ANY]),
}


def score(data: Path, model: Path | None, cache: Path, flip: bool = False) -> dict[str, np.ndarray]:
    """Per study (z order): raw and refined slice logits, study logits, study label of any,
    slice labels and image ids; with ``flip`` also the score keys suffixed ``_flip`` (the
    mirrored average)."""
    from ichnode.device import resolve_device
    from ichnode.model import demo_model_path, load_checkpoint
    from ichnode.study import run_study_head
    from training.dataset import RSNADataset, find_layout, header_index, load_labels
    from training.loop import make_loader
    from training.study import embed_dataset, group_studies

    layout = find_layout(data)
    ckpt = load_checkpoint(model or demo_model_path(), device=resolve_device("cpu"))
    table = load_labels(layout.csv)
    ids = list(table.index)
    index = header_index(layout, ids, cache, progress=True)
    index = index[index["readable"].astype(bool)]
    indexed = set(index["id"])  # once: built per id it made this quadratic
    readable = [i for i in ids if i in indexed]
    ds = RSNADataset.from_table(layout, table, readable, ckpt.spec, index=index)
    dev = next(ckpt.model.parameters()).device
    skipped = set(ids) - set(readable)
    loader = make_loader(ds, 64, 0, None)
    passes = [
        embed_dataset(ckpt.model, loader, ckpt.spec, dev, skipped, mirrored=mirrored)
        for mirrored in ((False, True) if flip else (False,))
    ]
    out: dict[str, np.ndarray] = {}
    for suffix, (seen, emb, logits, y) in zip(("", "_flip"), passes, strict=False):
        studies = group_studies(index, seen, emb, logits, y)
        raw, refined, study, label, lengths, slice_label = [], [], [], [], [], []
        for e, logits, ys in zip(studies.emb, studies.logits, studies.y, strict=True):
            if ckpt.study is None:  # a slice network alone: its maximum stands for the head
                ref, st = logits, logits.max(axis=0)
            else:
                ref, st = run_study_head(ckpt.study, e, logits)  # group_studies orders by z
            raw.append(logits)
            refined.append(ref)
            study.append(st)
            label.append(int(ys[:, ANY].max()))
            lengths.append(len(e))
            slice_label.append(ys)
        out |= {
            "raw" + suffix: np.concatenate(raw),
            "refined" + suffix: np.concatenate(refined),
            "study" + suffix: np.stack(study),
        }
        out |= {
            "label": np.array(label),
            "lengths": np.array(lengths),
            "slice_label": np.concatenate(slice_label),
            "ids": np.array([i for ids in studies.ids for i in ids]),
        }
    return out


def studies_of(scores: dict[str, np.ndarray], suffix: str = "") -> list[Study]:
    bounds = np.cumsum(np.r_[0, scores["lengths"]])
    raw, refined, study = (scores[k + suffix] for k in ("raw", "refined", "study"))
    return [
        {"raw": raw[a:b], "refined": refined[a:b], "study": study[i]}
        for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:], strict=True))
    ]


def pooled(paths: str, key: str) -> np.ndarray:
    """``key`` of the comma-separated ``scores.npz`` files, concatenated; a file named with
    ``:flip`` after it gives its mirrored-average scores for the score keys."""
    parts = []
    for item in paths.split(","):
        path, _, variant = item.partition(":")
        scores = np.load(path)
        flip = variant == "flip" and key in ("raw", "refined", "study")
        parts.append(scores[key + "_flip" if flip else key])
    return np.concatenate(parts)


def flag_of(model: Path, study_logits: np.ndarray) -> np.ndarray:
    """Whether ``model``'s flag is raised for each study, from its raw study logits."""
    from ichnode.model import load_checkpoint
    from ichnode.triage import over_threshold

    ckpt = load_checkpoint(model)
    if ckpt.study is None:
        raise SystemExit(f"{model} has no study model")
    probabilities = ckpt.study.study_calibration.apply_numpy(study_logits)
    return over_threshold(probabilities, ckpt.decision_thresholds)[:, ANY]


def max_raw(paths: str) -> np.ndarray:
    """The highest raw slice logit of ``any`` of every study of the pooled ``scores.npz``."""
    raw, lengths = pooled(paths, "raw")[:, ANY], pooled(paths, "lengths")
    return np.maximum.reduceat(raw, np.cumsum(np.r_[0, lengths[:-1]]))


def aggregated(paths: str, name: str) -> np.ndarray:
    """The study scores of aggregation ``name`` over the pooled ``scores.npz`` files."""
    return np.array(
        [AGGREGATIONS[name](s) for p in paths.split(",") for s in studies_of(dict(np.load(p)))]
    )


def compare_models(
    old: str,
    new: str,
    models: list[Path] | None = None,
    raw: bool = False,
    new_aggregation: str | None = None,
    ensemble: bool = False,
) -> None:
    """Print the paired differences of two models scored on the same sets (``--pair``); with
    ``raw`` of their slice networks alone: the maximum raw slice logit, the raw slice AUCs;
    with ``new_aggregation`` the new model's study score is that aggregation (the old one's
    stays its head, or its maximum raw slice); with ``ensemble`` the new score is the mean of
    the two models' study logits (both run on every slice) and the slice figures are the means
    of their logits."""
    y = pooled(old, "label")
    if not np.array_equal(y, pooled(new, "label")):
        raise SystemExit("the two lists do not hold the same studies in the same order")
    if raw:
        head_old, head_new = max_raw(old), max_raw(new)
    else:
        head_old, head_new = pooled(old, "study")[:, ANY], pooled(new, "study")[:, ANY]
    if new_aggregation:
        head_new = aggregated(new, new_aggregation)
    if ensemble:
        head_new = (head_old + head_new) / 2.0
    d, lo, hi = metrics.paired_auc_difference(y, head_old, head_new) or (np.nan,) * 3
    print(f"{len(y)} studies, {int(y.sum())} bleeding (pooled over {len(old.split(','))} sets)")
    which = "maximum raw slice" if raw else "head"
    print(
        f"study AUC(any), {which} -> {'mean of both' if ensemble else new_aggregation or which}: "
        f"{metrics.safe_auc(y, head_old):.4f} -> "
        f"{metrics.safe_auc(y, head_new):.4f}, paired difference {d:+.4f} ({lo:+.4f} to {hi:+.4f})"
    )
    print(
        f"specificity at 95 % sensitivity: {specificity_at(y, head_old):.3f} -> "
        f"{specificity_at(y, head_new):.3f}"
    )
    ys = pooled(old, "slice_label")
    kind = "raw" if raw else "refined"
    ref_old, ref_new = pooled(old, kind), pooled(new, kind)
    if ensemble:
        ref_new = (ref_old + ref_new) / 2.0
    for j, name in enumerate(metrics.SUBTYPES):
        a, b = metrics.safe_auc(ys[:, j], ref_old[:, j]), metrics.safe_auc(ys[:, j], ref_new[:, j])
        print(f"slice AUC {name:<18}{a:.4f} -> {b:.4f} ({b - a:+.4f})")
    for model, paths in zip(models or [], (old, new), strict=False):
        flag = flag_of(model, pooled(paths, "study"))
        print(
            f"flag of {model}: sensitivity {flag[y == 1].mean():.3f}, "
            f"specificity {1 - flag[y == 0].mean():.3f}"
        )


def specificity_at(y: np.ndarray, s: np.ndarray) -> float:
    """Specificity at the operating point's rule (sensitivity >= 0.95) on these studies."""
    if y.min() == y.max():
        return float("nan")
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
    parser.add_argument(
        "--flip", action="store_true", help="also score the mirrored slices (test-time)"
    )
    parser.add_argument(
        "--pair", nargs=2, metavar=("OLD", "NEW"), help="two models' scores.npz lists"
    )
    parser.add_argument(
        "--models", nargs=2, type=Path, metavar=("OLD", "NEW"),
        help="with --pair: the two checkpoints, to print each one's flag",
    )  # fmt: skip
    parser.add_argument(
        "--raw", action="store_true",
        help="with --pair: the slice networks alone (maximum raw slice logit, raw slice AUCs)",
    )  # fmt: skip
    parser.add_argument(
        "--new-aggregation", choices=sorted(AGGREGATIONS),
        help="with --pair: the new model's study score by this aggregation",
    )  # fmt: skip
    parser.add_argument(
        "--ensemble", action="store_true",
        help="with --pair: the new score is the mean of both models' (the two run together)",
    )  # fmt: skip
    args = parser.parse_args()
    if args.pair:
        compare_models(
            args.pair[0], args.pair[1], models=args.models, raw=args.raw,
            new_aggregation=args.new_aggregation, ensemble=args.ensemble,
        )  # fmt: skip
        return
    if args.scores:
        scores = dict(np.load(args.scores))
    elif args.data:
        out = args.out or Path("study-aggregation")
        out.mkdir(parents=True, exist_ok=True)
        scores = score(args.data, args.model, out / ".index", flip=args.flip)
        np.savez_compressed(out / "scores.npz", **scores)
    else:
        parser.error("give --data (and --model) or --scores")
    y = scores["label"]
    by: dict[str, np.ndarray] = {}
    for suffix in ("", "_flip") if "raw_flip" in scores else ("",):
        studies = studies_of(scores, suffix)
        label = " (flip)" if suffix else ""
        by |= {name + label: np.array([f(s) for s in studies]) for name, f in AGGREGATIONS.items()}
    print(f"{len(y)} studies, {int(y.sum())} bleeding; differences against '{args.against}'")
    print(f"{'aggregation':<27}{'study AUC':>10}{'spec@0.95':>10}   paired difference (95 % CI)")
    for name, s in by.items():
        paired = metrics.paired_auc_difference(y, by[args.against], s)
        diff = "n/a"
        if paired is not None:
            diff = f"{paired[0]:+.4f} ({paired[1]:+.4f} to {paired[2]:+.4f})"
        auc = metrics.safe_auc(y, s)
        print(f"{name:<27}{auc:>10.4f}{specificity_at(y, s):>10.3f}   {diff}")


if __name__ == "__main__":
    main()
