"""``ichnode evaluate``: score a checkpoint on an RSNA-layout folder (or a run's test split).

Writes ``OUT/report.json``, ``OUT/report.md``, ``OUT/confusion_<subtype>.png``,
``OUT/roc.png`` and ``OUT/reliability.png``. Probabilities are the checkpoint's calibrated ones
and predictions use its thresholds; preprocessing is the checkpoint's spec; no augmentation.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ichnode.device import resolve_device
from ichnode.model import demo_model_path, load_checkpoint
from ichnode.subtypes import SUBTYPES
from training import metrics, plots
from training.calibrate import apply_calibration
from training.dataset import DatasetError, RSNADataset, find_layout, load_labels, read_split
from training.loop import make_loader, predict_logits

log = logging.getLogger(__name__)


@dataclass
class Report:
    """Evaluation results; ``summary_text()`` is what the CLI prints."""

    model_id: str
    data: str
    split: str | None
    n_images: int
    skipped_images: int
    weighted_log_loss: float
    baseline_log_loss: float
    baseline_source: str
    subtypes: dict[str, metrics.SubtypeMetrics]
    files: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "model_id": self.model_id,
            "data": self.data,
            "split": self.split,
            "n_images": self.n_images,
            "skipped_images": self.skipped_images,
            "weighted_log_loss": self.weighted_log_loss,
            "baseline_log_loss": self.baseline_log_loss,
            "baseline_source": self.baseline_source,
            "subtypes": {
                k: v.to_dict() | {"roc_auc": metrics.finite_or_none(v.roc_auc)}
                for k, v in self.subtypes.items()
            },
            "files": self.files,
        }

    def summary_text(self) -> str:
        lines = [
            f"model {self.model_id} on {self.n_images} images"
            + (f" ({self.skipped_images} unreadable skipped)" if self.skipped_images else ""),
            f"weighted log loss {self.weighted_log_loss:.4f} "
            f"(prevalence baseline {self.baseline_log_loss:.4f})",
        ]
        for name, m in self.subtypes.items():
            auc = f"{m.roc_auc:.3f}" if math.isfinite(m.roc_auc) else "n/a"
            lines.append(
                f"  {name:<17} AUC {auc:>5}  F1 {m.f1:.3f}  recall {m.recall:.3f}  "
                f"precision {m.precision:.3f}  (threshold {m.threshold:.3f}, n+ {m.positives})"
            )
        return "\n".join(lines)

    def markdown(self) -> str:
        rows = [
            "| subtype | n+ | threshold | accuracy | precision | recall | F1 | ROC AUC |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for name, m in self.subtypes.items():
            auc = f"{m.roc_auc:.3f}" if math.isfinite(m.roc_auc) else "n/a"
            rows.append(
                f"| {name} | {m.positives} | {m.threshold:.3f} | {m.accuracy:.3f} | "
                f"{m.precision:.3f} | {m.recall:.3f} | {m.f1:.3f} | {auc} |"
            )
        reports = "\n\n".join(
            f"### {name}\n\n```\n{m.report}```" for name, m in self.subtypes.items()
        )
        images = "\n".join(f"![{f}]({f})" for f in self.files)
        return (
            f"# Evaluation of {self.model_id}\n\n"
            f"Data: `{self.data}`"
            + (f", test split of `{self.split}`" if self.split else "")
            + f"; {self.n_images} images, {self.skipped_images} skipped (unreadable).\n\n"
            f"Weighted multi-label log loss: **{self.weighted_log_loss:.4f}** "
            f"(always predicting the {self.baseline_source} prevalence: "
            f"{self.baseline_log_loss:.4f}).\n\n" + "\n".join(rows) + "\n\n"
            f"## Classification reports\n\n{reports}\n\n## Figures\n\n{images}\n"
        )


def evaluate(
    data: Path,
    model: Path | None,
    out: Path,
    split: Path | None = None,
    device: str = "auto",
    batch_size: int = 64,
    progress: bool = True,
) -> Report:
    """Evaluate ``model`` (default: the demo model) on ``data``; write the report to ``out``."""
    layout = find_layout(data)
    ckpt = load_checkpoint(model or demo_model_path(), device=resolve_device(device))
    table = load_labels(layout.csv)
    ids = list(table.index)
    if split is not None:
        wanted = set(read_split(split)["ids"]["test"])
        ids = [i for i in ids if i in wanted]
    if not ids:
        raise DatasetError("no images to evaluate (empty folder or test split not in it)")
    ds = RSNADataset.from_table(layout, table, ids, ckpt.spec)
    skipped: set[str] = set()
    logits, y, _ = predict_logits(
        ckpt.model, make_loader(ds, batch_size, 0, None), next(ckpt.model.parameters()).device,
        skipped, desc="evaluate", progress=progress,
    )  # fmt: skip
    if len(y) == 0:
        raise DatasetError("no readable images to evaluate")
    probs = apply_calibration(ckpt.calibration, logits)
    prevalence = ckpt.summary.get("train_prevalence")
    source = "training" if prevalence else "evaluated data's"
    if not prevalence:
        prevalence = metrics.prevalence(y).tolist()
    report = Report(
        model_id=ckpt.model_id,
        data=str(data),
        split=str(split) if split else None,
        n_images=len(y),
        skipped_images=len(skipped),
        weighted_log_loss=metrics.weighted_log_loss(y, probs),
        baseline_log_loss=metrics.baseline_log_loss(y, np.clip(prevalence, 1e-6, 1 - 1e-6)),
        baseline_source=source,
        subtypes={
            name: metrics.subtype_metrics(y[:, j], probs[:, j], ckpt.thresholds[name])
            for j, name in enumerate(SUBTYPES)
        },
    )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name, m in report.subtypes.items():
        plots.confusion_heatmap(m.confusion, name, out / f"confusion_{name}.png")
        report.files.append(f"confusion_{name}.png")
    aucs = {k: v.roc_auc for k, v in report.subtypes.items()}
    plots.roc_curves(y, probs, aucs, out / "roc.png")
    plots.reliability_diagram(y, probs, out / "reliability.png")
    report.files += ["roc.png", "reliability.png"]
    (out / "report.json").write_text(json.dumps(report.to_dict(), indent=1))
    (out / "report.md").write_text(report.markdown())
    log.info("evaluation written to %s", out)
    return report
