"""``ichnode evaluate --compare NEW``: two checkpoints side by side on the same studies.

Both are evaluated by :func:`training.evaluate.evaluate` on the same folder and split (for a
fine-tuned model: the held-out reviewed studies of its run's ``split.json``), each report in
its own subfolder (``OUT/old``, ``OUT/new``), and the figures that decide whether to serve the
new one are put in one table (``OUT/compare.md``, ``OUT/compare.json``), with the difference
in study AUC(any) and its paired bootstrap interval over the studies both were scored on: a
difference whose interval holds 0 is not a difference these studies can show.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ichnode.subtypes import ANY, SUBTYPES
from training import metrics
from training.evaluate import STUDIES_CSV, Report, evaluate

#: The row of the paired difference in the table.
DIFFERENCE = "study AUC (any), new - old (paired 95 % CI)"


@dataclass
class Comparison:
    """The two reports, and the rows of the side-by-side table."""

    old: Report
    new: Report
    #: AUC(new) - AUC(old) of ``any`` on the same studies, and its paired bootstrap interval.
    auc_difference: tuple[float, float, float] | None = None

    def rows(self) -> list[tuple[str, float | int | str | None, float | int | str | None]]:
        """``(figure, old, new)`` rows."""

        def figures(report: Report) -> dict[str, float | int | str | None]:
            st = report.study
            op = st.get("operating_point", {})
            out: dict[str, float | int | str | None] = {
                "model": report.model_id,
                "studies": st.get("n_studies", 0),
                "slices": report.n_images,
                "study AUC (any)": st.get("auc", {}).get(ANY),
                "sensitivity": op.get("sensitivity"),
                "specificity": op.get("specificity"),
                "PPV": op.get("ppv"),
                "false alarms per 100 normal": op.get("false_alarms_per_100_normal"),
                "slice weighted log loss": report.weighted_log_loss,
            }
            for name in SUBTYPES:
                out[f"slice AUC {name}"] = report.subtypes[name].roc_auc
            return out

        old, new = figures(self.old), figures(self.new)
        rows = [(key, old[key], new[key]) for key in old]
        if self.auc_difference is not None:
            diff, lo, hi = self.auc_difference
            rows.insert(4, (DIFFERENCE, "", f"{diff:+.3f} ({lo:+.3f} to {hi:+.3f})"))
        return rows

    def text(self) -> str:
        """The table as aligned text (what the CLI prints)."""
        cells = [("", "old", "new")] + [(k, _cell(a), _cell(b)) for k, a, b in self.rows()]
        widths = [max(len(row[i]) for row in cells) for i in range(3)]
        return "\n".join(
            f"{k.ljust(widths[0])}  {a.rjust(widths[1])}  {b.rjust(widths[2])}" for k, a, b in cells
        )

    def markdown(self) -> str:
        lines = ["| | old | new |", "|---|---:|---:|"]
        lines += [f"| {k} | {_cell(a)} | {_cell(b)} |" for k, a, b in self.rows()]
        return "\n".join(lines) + "\n"


def _cell(value: float | int | str | None) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def compare(
    data: Path,
    old: Path | None,
    new: Path,
    out: Path,
    split: Path | None = None,
    device: str = "auto",
    batch_size: int = 64,
) -> Comparison:
    """Evaluate ``old`` (default: the demo model) and ``new`` on the same images."""
    out = Path(out)
    result = Comparison(
        old=evaluate(data, old, out / "old", split=split, device=device, batch_size=batch_size),
        new=evaluate(data, new, out / "new", split=split, device=device, batch_size=batch_size),
    )
    result.auc_difference = paired_difference(out / "old" / STUDIES_CSV, out / "new" / STUDIES_CSV)
    (out / "compare.md").write_text(result.markdown())
    rows = [{"figure": k, "old": a, "new": b} for k, a, b in result.rows()]
    (out / "compare.json").write_text(json.dumps(rows, indent=1, default=str))
    return result


def paired_difference(old_csv: Path, new_csv: Path) -> tuple[float, float, float] | None:
    """Study AUC(any) of ``new`` minus ``old`` over the studies both tables hold, with its
    paired bootstrap interval (:func:`training.metrics.paired_auc_difference`)."""
    label, score = f"label_{ANY}", f"p_{ANY}"
    both = pd.read_csv(old_csv)[["study", label, score]].merge(
        pd.read_csv(new_csv)[["study", score]], on="study", suffixes=("_old", "_new")
    )
    return metrics.paired_auc_difference(
        both[label].to_numpy(), both[f"{score}_old"].to_numpy(), both[f"{score}_new"].to_numpy()
    )
