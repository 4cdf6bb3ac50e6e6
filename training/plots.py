"""Evaluation figures (matplotlib Agg backend, seaborn heat maps): confusion matrices, ROC
curves, reliability diagram."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first
import numpy as np  # noqa: E402
import seaborn as sns  # noqa: E402
from sklearn.calibration import calibration_curve  # noqa: E402
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_curve  # noqa: E402

from ichnode.subtypes import DISPLAY_NAMES, SUBTYPES  # noqa: E402

RELIABILITY_BINS = 10
DPI = 110


def confusion_heatmap(confusion: list[list[int]], subtype: str, path: Path) -> Path:
    """One subtype's 2×2 confusion matrix as an annotated heat map."""
    fig, ax = plt.subplots(figsize=(3.6, 3.2))
    sns.heatmap(
        np.asarray(confusion),
        annot=True,
        fmt="d",
        cmap="Blues",
        cbar=False,
        xticklabels=["neg", "pos"],
        yticklabels=["neg", "pos"],
        ax=ax,
    )
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(DISPLAY_NAMES[subtype], fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def roc_curves(y: np.ndarray, p: np.ndarray, aucs: dict[str, float], path: Path) -> Path:
    """ROC curves of the six subtypes on one plot."""
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for j, name in enumerate(SUBTYPES):
        if y[:, j].min() == y[:, j].max():
            continue
        fpr, tpr, _ = roc_curve(y[:, j], p[:, j])
        ax.plot(fpr, tpr, label=f"{name} (AUC {aucs[name]:.3f})")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title("ROC curves")
    if ax.lines[:-1]:
        ax.legend(fontsize=8, loc="lower right")
    else:
        ax.text(0.5, 0.5, "no label has positives and negatives", ha="center", va="center")
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def pr_curves(y: np.ndarray, p: np.ndarray, path: Path) -> Path:
    """Precision-recall curves of the six subtypes (with average precision) on one plot: at a
    low prevalence they show what the ROC curve hides, how many flags are false."""
    fig, ax = plt.subplots(figsize=(5.5, 5))
    drawn = 0
    for j, name in enumerate(SUBTYPES):
        if y[:, j].min() == y[:, j].max():
            continue
        precision, recall, _ = precision_recall_curve(y[:, j], p[:, j])
        ap = average_precision_score(y[:, j], p[:, j])
        ax.plot(recall, precision, label=f"{name} (AP {ap:.3f}, prevalence {y[:, j].mean():.3f})")
        drawn += 1
    ax.set_xlabel("recall (sensitivity)")
    ax.set_ylabel("precision (PPV)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_title("Precision-recall curves")
    if drawn:
        ax.legend(fontsize=7, loc="lower left")
    else:
        ax.text(0.5, 0.5, "no label has positives and negatives", ha="center", va="center")
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def reliability_diagram(y: np.ndarray, p: np.ndarray, path: Path) -> Path:
    """Observed frequency against mean predicted probability, per subtype (10 bins)."""
    fig, axes = plt.subplots(2, 3, figsize=(10, 6.5), sharex=True, sharey=True)
    for j, (name, ax) in enumerate(zip(SUBTYPES, axes.flat, strict=True)):
        ax.plot([0, 1], [0, 1], "k--", lw=0.8)
        if y[:, j].min() != y[:, j].max():
            frac, mean = calibration_curve(y[:, j], p[:, j], n_bins=RELIABILITY_BINS)
            ax.plot(mean, frac, "o-", ms=3)
        else:
            what = "no positives" if y[:, j].max() == 0 else "no negatives"
            ax.text(0.5, 0.5, what, ha="center", va="center", fontsize=9, color="0.4")
        ax.set_title(name, fontsize=9)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
    for ax in axes[-1]:
        ax.set_xlabel("predicted probability")
    for ax in axes[:, 0]:
        ax.set_ylabel("observed frequency")
    fig.suptitle("Reliability (calibrated probabilities)")
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path
