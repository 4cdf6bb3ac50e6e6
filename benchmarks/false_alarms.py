"""The normal studies a model flags first: where in the head, read as what, and what they show.

    python benchmarks/false_alarms.py --data sel25 --scores OUT/scores.npz [--top 12] [--png F]
        [--sample N]

``--scores`` is the ``scores.npz`` that ``benchmarks/study_aggregation.py --data`` wrote for
the same folder. Normal studies are ranked by the study model's ``any`` (the node's flag); for
each of the first ``--top``, the slice with the highest refined ``any``: its height in the
study (0 = lowest slice, 1 = highest) and the subtype it scores highest. Then, over every
normal study flagged at 95 % study sensitivity on the same studies, how their highest slices
spread over the head's height and over subtypes. ``--png`` draws the top slices in a brain
window (W80 L40), to look at what the model took for blood; ``--sample N`` draws N flagged
normal studies picked at random instead (the top ones are the extremes, not the typical).
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # training/ beside ichnode/

from ichnode.subtypes import SUBTYPES  # noqa: E402
from training.calibrate import sensitivity_threshold  # noqa: E402

ANY = SUBTYPES.index("any")
#: Brain window (centre, width) of the drawing.
BRAIN = (40.0, 80.0)


def top_slices(scores: dict[str, np.ndarray]) -> list[dict]:
    """Per normal study: its study logit, its highest slice's id, height and leading subtype."""
    bounds = np.cumsum(np.r_[0, scores["lengths"]])
    out = []
    for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        if scores["label"][i]:
            continue
        refined = scores["refined"][a:b]
        k = int(refined[:, ANY].argmax())
        out.append(
            {
                "study_logit": float(scores["study"][i, ANY]),
                "id": str(scores["ids"][a + k]),
                "height": k / max(b - a - 1, 1),
                "reads_as": SUBTYPES[int(refined[k, :ANY].argmax())],
            }
        )
    out.sort(key=lambda r: -r["study_logit"])
    return [r | {"rank": rank} for rank, r in enumerate(out, 1)]


def draw(data: Path, rows: list[dict], png: Path) -> None:
    """The rows' slices in a brain window, four to a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ichnode.imaging import read, to_hu
    from training.dataset import find_layout

    layout = find_layout(data)
    cols = 4
    lines = -(-len(rows) // cols)
    fig, axes = plt.subplots(lines, cols, figsize=(3 * cols, 3.2 * lines), squeeze=False)
    lo, hi = BRAIN[0] - BRAIN[1] / 2, BRAIN[0] + BRAIN[1] / 2
    for ax, row in zip(axes.flat, rows, strict=False):
        ax.imshow(to_hu(read(layout.image_path(row["id"]))), cmap="gray", vmin=lo, vmax=hi)
        ax.set_title(f"#{row['rank']} h={row['height']:.2f} {row['reads_as'][:16]}", fontsize=8)
    for ax in axes.flat:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(png, dpi=80)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="phantom folder (RSNA layout)")
    parser.add_argument("--scores", type=Path, required=True, help="study_aggregation's npz")
    parser.add_argument("--top", type=int, default=12, help="normal studies to list and draw")
    parser.add_argument("--png", type=Path, help="draw the top slices into this file")
    parser.add_argument("--sample", type=int, help="draw N random flagged normals instead")
    parser.add_argument("--seed", type=int, default=0, help="of the --sample draw")
    args = parser.parse_args()
    scores = dict(np.load(args.scores))
    rows = top_slices(scores)
    print(f"{'rank':>4}  {'study logit':>11}  {'height':>6}  reads as          image")
    for row in rows[: args.top]:
        print(
            f"{row['rank']:>4}  {row['study_logit']:>11.2f}  {row['height']:>6.2f}  "
            f"{row['reads_as']:<16}  {row['id']}"
        )
    y, study = scores["label"], scores["study"][:, ANY]
    if not y.any():
        raise SystemExit("no bleeding study in these scores: no operating point to flag at")
    threshold = sensitivity_threshold(y, study)
    flagged = [r for r in rows if r["study_logit"] >= threshold]
    print(f"\n{len(flagged)} of {len(rows)} normal studies flagged at 95 % study sensitivity")
    heights = np.array([r["height"] for r in flagged])
    edges = np.linspace(0, 1, 6)
    counts, _ = np.histogram(heights, bins=edges)
    print(
        "highest slice at height "
        + ", ".join(
            f"{a:.1f}-{b:.1f}: {n}" for a, b, n in zip(edges[:-1], edges[1:], counts, strict=True)
        )
    )
    print(
        "read as "
        + ", ".join(f"{k} {n}" for k, n in Counter(r["reads_as"] for r in flagged).most_common())
    )
    if args.png:
        drawn = rows[: args.top]
        if args.sample:
            picks = np.random.default_rng(args.seed).permutation(len(flagged))[: args.sample]
            drawn = [flagged[i] for i in sorted(picks)]
        draw(args.data, drawn, args.png)
        print(f"drawn: {args.png}")


if __name__ == "__main__":
    main()
