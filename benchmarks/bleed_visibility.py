"""Which bleeding studies a model misses, by how visible their blood is.

    python benchmarks/bleed_visibility.py --data heldout --studies REPORT/studies.csv
    python benchmarks/bleed_visibility.py --data sel25 --scores OUT/scores.npz

``--studies`` is the ``studies.csv`` that ``ichnode evaluate --data DATA`` wrote, or
``--scores`` the ``scores.npz`` of ``benchmarks/study_aggregation.py`` (its study model's
``any``: a logit, so the ranks and AUCs are the same, the scores are not probabilities). For each
bleeding study: its visibility (:mod:`phantoms.visibility`, the most visible slice), the
model's study p(any), and the share of normal studies scoring at least as high (the false
alarms it takes to catch that study). Then, by visibility quartile, the study AUC(any) of
those positives against every normal study, and the study AUC a model would reach that ranks
every bleed with d' >= ``--visible`` above every normal study and the others at chance: the
ceiling the data leave for a model that cannot see what is not there. The same figures in
fixed d' bins, which compare folders, are the "bleed visibility" breakdown of evaluate's
``report.md``.

Folders written since 2026-12-08 also carry each slice's *ideal observer* d'
(:mod:`phantoms.scanner`: from the generator's pre-noise images, for an observer that knows
the anatomy, the bleed and the noise). Then the same breakdown follows by that d' in fixed
bins, and the study AUC of the ideal observer itself: the ceiling no model can pass on this
folder.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from phantoms.synth import MASK_DIR, read_mask, study_heads
from phantoms.visibility import (
    SLICES_CSV,
    folder_visibility,
    ideal_study_auc,
    study_blood_hu,
    study_ideal_dprime,
    study_visibility,
)

#: Bins of the ideal observer's d' (left-closed).
IDEAL_BINS = [0.0, 3.0, 10.0, 20.0, 40.0, 80.0, np.inf]
#: Bins of the blood's median HU on its brightest slice (brain is about 30 HU).
BLOOD_HU_BINS = [-np.inf, 20.0, 40.0, 50.0, np.inf]


def studies_from_scores(data: Path, scores_npz: Path) -> pd.DataFrame:
    """``label_any`` and ``p_any`` (the study logit) per phantom study key, from scores.npz."""
    scores = np.load(scores_npz)
    first = np.cumsum(np.r_[0, scores["lengths"]])[:-1]  # each study's first slice
    study_of = pd.read_csv(data / SLICES_CSV).set_index("image_id")["study"]
    keys = study_of.loc[scores["ids"][first]].to_numpy()
    return pd.DataFrame(
        {"label_any": scores["label"], "p_any": scores["study"][:, -1]}, index=pd.Index(keys)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="phantom folder (RSNA layout)")
    given = parser.add_mutually_exclusive_group(required=True)
    given.add_argument("--studies", type=Path, help="evaluate's studies.csv")
    given.add_argument("--scores", type=Path, help="study_aggregation.py's scores.npz")
    parser.add_argument("--visible", type=float, default=3.0, help="d' counted as visible")
    parser.add_argument("--list", action="store_true", help="print every bleeding study")
    parser.add_argument(
        "--seed",
        type=int,
        help="the folder's synth seed: each study's kernel, replayed, beside the blood's HU",
    )
    args = parser.parse_args()

    vis = study_visibility(folder_visibility(args.data))
    studies = (
        pd.read_csv(args.studies).set_index("study")
        if args.studies
        else studies_from_scores(args.data, args.scores)
    )
    normal = studies.loc[studies["label_any"] == 0, "p_any"].to_numpy()
    pos = studies[studies["label_any"] == 1].join(vis, how="inner")
    if pos.empty or len(normal) == 0:
        raise SystemExit("need bleeding and normal studies with bleed maps in --data")
    pos["false_alarms_to_catch"] = [float((normal >= p).mean()) for p in pos["p_any"]]
    pos = pos.sort_values("dprime")
    if args.list:
        cols = ["p_any", "false_alarms_to_catch", "pixels", "contrast", "sd", "dprime"]
        print(pos[cols].round(3).to_string())
        print()

    def auc(p: np.ndarray) -> float:
        y = np.r_[np.ones(len(p)), np.zeros(len(normal))]
        return float(roc_auc_score(y, np.r_[p, normal]))

    print(f"{len(pos)} bleeding studies, {len(normal)} normal ({args.studies or args.scores})")
    print(
        f"study AUC(any), all bleeding studies against the normal ones: {auc(pos.p_any.values):.3f}"
    )
    quartile = pd.qcut(pos["dprime"], 4, labels=["q1 (least visible)", "q2", "q3", "q4"])
    header = "studies   d' range        study AUC   median false alarms to catch"
    print(f"{'visibility quartile':24s} {header}")
    for name, group in pos.groupby(quartile, observed=True):
        print(
            f"{name:24s} {len(group):7d}   {group.dprime.min():6.1f}-{group.dprime.max():<7.1f} "
            f"{auc(group.p_any.values):9.3f}   {group.false_alarms_to_catch.median():.2f}"
        )
    hidden = int((pos["dprime"] < args.visible).sum())
    ceiling = (len(pos) - hidden + 0.5 * hidden) / len(pos)
    print(
        f"d' < {args.visible:g}: {hidden} of {len(pos)} bleeding studies; a model ranking every "
        f"other one above every normal study and these at chance: study AUC {ceiling:.3f}"
    )
    try:
        ideal = study_ideal_dprime(args.data)
    except KeyError:
        return
    pos = pos.join(ideal, how="inner")
    print()
    print("by the ideal observer's d' (the generator's own: anatomy, bleed and noise known)")
    print(f"{'ideal d' + chr(39):24s} studies   share   study AUC   ideal observer's AUC")
    bins = pd.cut(pos["ideal_dprime"], IDEAL_BINS, right=False)
    for interval, group in pos.groupby(bins, observed=True):
        print(
            f"{str(interval):24s} {len(group):7d}   {len(group) / len(pos):5.2f}"
            f"   {auc(group.p_any.values):9.3f}   {ideal_study_auc(group.ideal_dprime.values):.3f}"
        )
    print(
        f"the ideal observer (knows anatomy, bleed and noise), all {len(pos)} bleeding studies: "
        f"study AUC {ideal_study_auc(pos.ideal_dprime.values):.3f}; this model "
        f"{auc(pos.p_any.values):.3f}"
    )
    pos = pos.join(study_blood_hu(args.data), how="inner")
    kernel = ""
    if args.seed is not None:  # replay each study's draws: its unsharp-mask amount (0: none)
        table = pd.read_csv(args.data / SLICES_CSV, dtype={"study": str})
        preset = str(table["preset"].iloc[0])
        size = int(np.sqrt(read_mask(next((args.data / MASK_DIR).glob("*.png"))).size))
        heads = study_heads(table["study"].nunique(), args.seed, size, preset)
        pos["sharpen"] = [heads[k].sharpen for k in pos.index]
        kernel = "   sharp kernel"
    print()
    print("by the blood's median HU on its brightest slice (what the image shows at best)")
    print(f"{'median HU':24s} studies   share   study AUC{kernel}")
    for interval, group in pos.groupby(pd.cut(pos["blood_hu"], BLOOD_HU_BINS, right=False),
                                       observed=True):  # fmt: skip
        sharp = f"   {(group.sharpen > 0).mean():12.2f}" if kernel else ""
        print(
            f"{str(interval):24s} {len(group):7d}   {len(group) / len(pos):5.2f}"
            f"   {auc(group.p_any.values):9.3f}{sharp}"
        )


if __name__ == "__main__":
    main()
