"""``ichnode evaluate``: score a checkpoint on an RSNA-layout folder (or a run's test split).

A triage model is judged by its study flag, so the report leads with study-level figures:
study AUC per label and, at the checkpoint's operating point, sensitivity, specificity, PPV and
false alarms per 100 normal studies; then the slice-level ones (AUC, F1, weighted log loss),
breakdowns by slice position (the lowest 10 % of each study: the skull base) and, for phantoms
with ``phantom_slices.csv``, by bleed size. Slices are grouped by StudyInstanceUID and ordered
by z exactly as the node does, and scored by the node's own function
(:func:`ichnode.inference.score_study`); flags come from :func:`ichnode.triage.decide`.

Writes ``OUT/report.json``, ``OUT/report.md``, ``OUT/studies.csv`` (one row per study),
``OUT/confusion_<subtype>.png``, ``OUT/roc.png`` and ``OUT/pr.png`` (slices),
``OUT/study_roc.png`` and ``OUT/reliability.png``.
No augmentation.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ichnode.device import resolve_device
from ichnode.inference import score_study
from ichnode.model import demo_model_path, load_checkpoint
from ichnode.subtypes import ANY, SUBTYPES
from ichnode.triage import decide, over_threshold
from phantoms.synth import MASK_DIR, SLICES_CSV
from phantoms.visibility import folder_visibility, study_visibility
from training import metrics, plots
from training.dataset import (
    DatasetError,
    RSNADataset,
    find_layout,
    header_index,
    load_labels,
    read_split,
)
from training.loop import make_loader
from training.study import embed_dataset, group_studies

#: The per-study table ``evaluate`` writes beside its report.
STUDIES_CSV = "studies.csv"
#: The share of each study's slices (lowest by z) reported apart: the skull base.
LOW_SLICE_SHARE = 0.1

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
    study: dict = field(default_factory=dict)
    breakdowns: dict = field(default_factory=dict)
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
            "study": self.study,
            "breakdowns": self.breakdowns,
            "files": self.files,
        }

    @property
    def worse_than_baseline(self) -> bool:
        return self.weighted_log_loss > self.baseline_log_loss

    def summary_text(self) -> str:
        st = self.study
        op = st.get("operating_point", {})
        lines = [
            f"model {self.model_id} on {st.get('n_studies', 0)} studies, {self.n_images} images"
            + (f" ({self.skipped_images} unreadable skipped)" if self.skipped_images else ""),
            f"study level: AUC(any) {_num(st.get('auc', {}).get(ANY))}"
            f"{_interval(st.get('auc_any_interval'))}, at the operating point "
            f"(any >= {_num(op.get('threshold'))}): sensitivity {_num(op.get('sensitivity'))}"
            f"{_interval(op.get('sensitivity_interval'))}, specificity "
            f"{_num(op.get('specificity'))}{_interval(op.get('specificity_interval'))}, "
            f"PPV {_num(op.get('ppv'))}, "
            f"{_num(op.get('false_alarms_per_100_normal'), 1)} false alarms per 100 normal "
            f"studies ({st.get('n_positive', 0)} positive, {st.get('n_negative', 0)} normal)",
            "study AUC: "
            + ", ".join(f"{k} {_num(v)}" for k, v in st.get("auc", {}).items()),
            f"slice level: weighted log loss {self.weighted_log_loss:.4f} "
            f"(prevalence baseline {self.baseline_log_loss:.4f}"
            + ("; WORSE than always predicting the prevalence)" if self.worse_than_baseline
               else ")"),
        ]  # fmt: skip
        for name, m in self.subtypes.items():
            if m.positives == 0 or m.negatives == 0:
                what = "positives" if m.positives == 0 else "negatives"
                lines.append(f"  {name:<17} n/a: no {what} in this set")
                continue
            auc = f"{m.roc_auc:.3f}" if math.isfinite(m.roc_auc) else "n/a"
            lines.append(
                f"  {name:<17} AUC {auc:>5}  F1 {m.f1:.3f}  recall {m.recall:.3f}  "
                f"precision {m.precision:.3f}  (threshold {m.threshold:.3f}, n+ {m.positives})"
            )
        return "\n".join(lines)

    def markdown(self) -> str:
        st = self.study
        op = st.get("operating_point", {})
        study_rows = [
            "| label | study AUC | n+ studies |",
            "|---|---:|---:|",
            *(
                f"| {k} | {_num(v)} | {st.get('positives', {}).get(k, 0)} |"
                for k, v in st.get("auc", {}).items()
            ),
        ]
        named = [
            "| subtype named | sensitivity | specificity | n+ studies |",
            "|---|---:|---:|---:|",
            *(
                f"| {k} | {_num(v['sensitivity'])} | {_num(v['specificity'])} | {v['positives']} |"
                for k, v in st.get("named_subtypes", {}).items()
            ),
        ]
        breakdown = "\n".join(
            f"- **{k}**: " + ", ".join(f"{a} {_num(b) if isinstance(b, float) or b is None else b}"
                                      for a, b in v.items())
            for k, v in _flatten_breakdowns(self.breakdowns).items()
        )  # fmt: skip
        study_md = (
            f"## Study level ({st.get('n_studies', 0)} studies: {st.get('n_positive', 0)} with "
            f"a bleed, {st.get('n_negative', 0)} normal)\n\n"
            f"At the shipped operating point (study p(any) >= {_num(op.get('threshold'))}): "
            f"sensitivity **{_num(op.get('sensitivity'))}**"
            f"{_interval(op.get('sensitivity_interval'))}, specificity "
            f"**{_num(op.get('specificity'))}**{_interval(op.get('specificity_interval'))}, "
            f"PPV {_num(op.get('ppv'))}, "
            f"{_num(op.get('false_alarms_per_100_normal'), 1)} false alarms per 100 normal "
            f"studies. Study AUC(any) {_num(st.get('auc', {}).get(ANY))}"
            f"{_interval(st.get('auc_any_interval'))}. Intervals: 95 %, Wilson for the rates, "
            "bootstrap over studies for the AUC.\n\n"
            + "\n".join(study_rows)
            + "\n\n"
            + "\n".join(named)
            + "\n\n"
            f"## Breakdowns\n\n{breakdown or 'none'}\n\n"
        )
        rows = [
            "| subtype | n+ | threshold | accuracy | precision | recall | F1 | ROC AUC |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for name, m in self.subtypes.items():
            if m.positives == 0 or m.negatives == 0:
                what = "positives" if m.positives == 0 else "negatives"
                rows.append(f"| {name} | {m.positives} | n/a: no {what} | | | | | n/a |")
                continue
            auc = f"{m.roc_auc:.3f}" if math.isfinite(m.roc_auc) else "n/a"
            rows.append(
                f"| {name} | {m.positives} | {m.threshold:.3f} | {m.accuracy:.3f} | "
                f"{m.precision:.3f} | {m.recall:.3f} | {m.f1:.3f} | {auc} |"
            )
        reports = "\n\n".join(
            f"### {name}\n\n```\n{m.report}```" for name, m in self.subtypes.items()
        )
        images = "\n".join(f"![{f}]({f})" for f in self.files)
        worse = (
            " The model is **worse** than always predicting the prevalence."
            if self.worse_than_baseline
            else ""
        )
        return (
            f"# Evaluation of {self.model_id}\n\n"
            f"Data: `{self.data}`"
            + (f", test split of `{self.split}`" if self.split else "")
            + f"; {self.n_images} images, {self.skipped_images} skipped (unreadable).\n\n"
            + study_md
            + "## Slice level\n\n"
            f"Weighted multi-label log loss: **{self.weighted_log_loss:.4f}** "
            f"(always predicting the {self.baseline_source} prevalence: "
            f"{self.baseline_log_loss:.4f}).{worse}\n\n" + "\n".join(rows) + "\n\n"
            f"## Classification reports\n\n{reports}\n\n## Figures\n\n{images}\n"
        )


def _num(value: float | None, digits: int = 3) -> str:
    """A metric for people: ``n/a`` when it is undefined (no positives, no negatives)."""
    if value is None or not math.isfinite(float(value)):
        return "n/a"
    return f"{float(value):.{digits}f}"


def _interval(bounds: tuple[float, float] | list[float] | None) -> str:
    """`` (95 % CI lo-hi)`` after a figure, or nothing when it has no interval."""
    if bounds is None:
        return ""
    return f" (95 % CI {bounds[0]:.3f}-{bounds[1]:.3f})"


def _rate(hits: int, total: int) -> float | None:
    return hits / total if total else None


def _flatten_breakdowns(breakdowns: dict) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for name, value in breakdowns.items():
        if isinstance(value, dict) and value and all(isinstance(v, dict) for v in value.values()):
            for sub, inner in value.items():
                out[f"{name} {sub}"] = inner
        else:
            out[name] = value
    return out


def study_metrics(y: np.ndarray, p: np.ndarray, thresholds: dict[str, float]) -> dict[str, object]:
    """Study-level figures of study labels ``y`` and probabilities ``p`` (both ``(S, 6)``)."""
    calls = over_threshold(p, thresholds)
    j = SUBTYPES.index(ANY)
    pos, neg = y[:, j] == 1, y[:, j] == 0
    flagged = calls[:, j]
    tp, fp = int((flagged & pos).sum()), int((flagged & neg).sum())
    aucs = {k: metrics.finite_or_none(v) for k, v in metrics.aucs(y, p).items()}
    named = {}
    for k, name in enumerate(SUBTYPES):
        if name == ANY:
            continue
        call = calls[:, k] & flagged  # a subtype is named only in a flag (triage.decide)
        has = y[:, k] == 1
        named[name] = {
            "sensitivity": _rate(int((call & has).sum()), int(has.sum())),
            "specificity": _rate(int((~call & ~has).sum()), int((~has).sum())),
            "positives": int(has.sum()),
        }
    tn = int((~flagged & neg).sum())
    return {
        "n_studies": len(y),
        "n_positive": int(pos.sum()),
        "n_negative": int(neg.sum()),
        "positives": {name: int(y[:, k].sum()) for k, name in enumerate(SUBTYPES)},
        "auc": aucs,
        # How far a few hundred studies pin the figures down (docs/training.md: the same model
        # scored 0.845-0.905 on four sets of the same preset).
        "auc_any_interval": metrics.auc_interval(y[:, j], p[:, j]),
        "operating_point": {
            "threshold": float(thresholds[ANY]),
            "sensitivity": _rate(tp, int(pos.sum())),
            "sensitivity_interval": metrics.proportion_interval(tp, int(pos.sum())),
            "specificity": _rate(tn, int(neg.sum())),
            "specificity_interval": metrics.proportion_interval(tn, int(neg.sum())),
            "ppv": _rate(tp, tp + fp),
            "false_alarms_per_100_normal": None if not neg.sum() else 100.0 * fp / neg.sum(),
        },
        "named_subtypes": named,
    }


def low_slice_breakdown(
    y: np.ndarray, p: np.ndarray, low: np.ndarray, threshold: float
) -> dict[str, dict]:
    """Slice-level ``any`` on the lowest slices of each study versus the others."""
    j = SUBTYPES.index(ANY)
    over = over_threshold(p, {name: threshold for name in SUBTYPES})[:, j]
    out = {}
    for name, part in (("lowest 10% of slices", low), ("other slices", ~low)):
        yy, normal = y[part, j], y[part, j] == 0
        out[name] = {
            "slices": int(part.sum()),
            "positives": int(yy.sum()),
            "auc_any": metrics.finite_or_none(metrics.safe_auc(yy, p[part, j])),
            "false_positive_rate": _rate(int((over[part] & normal).sum()), int(normal.sum())),
        }
    return out


def size_breakdown(study_y: np.ndarray, flagged: np.ndarray, bleed: np.ndarray) -> dict[str, dict]:
    """Study sensitivity by the largest bleed area on any slice (terciles of the positives)."""
    pos = study_y[:, SUBTYPES.index(ANY)] == 1
    if not pos.any():
        return {}
    edges = np.quantile(bleed[pos], [1 / 3, 2 / 3])
    bins = np.digitize(bleed, edges)
    out = {}
    for k, name in enumerate(("smallest third", "middle third", "largest third")):
        part = pos & (bins == k)
        lo = 0 if k == 0 else int(edges[k - 1])
        hi = int(edges[k]) if k < 2 else int(bleed[pos].max())
        out[f"{name} ({lo}-{hi} px)"] = {
            "studies": int(part.sum()),
            "sensitivity": _rate(int((flagged & part).sum()), int(part.sum())),
        }
    return out


#: d' bins of the visibility breakdown (:mod:`phantoms.visibility`), fixed so that folders
#: can be compared bin by bin.
VISIBILITY_EDGES = (10.0, 20.0, 40.0, 80.0)


def visibility_breakdown(
    study_y: np.ndarray, p_any: np.ndarray, flagged: np.ndarray, dprime: np.ndarray
) -> dict[str, dict]:
    """Per d' bin of the bleeding studies (the visibility of their most visible slice): how
    many, the sensitivity at the operating point, and the study AUC(any) of those studies
    against every normal one. A bleeding study without a measurable slice (NaN) is in no bin."""
    pos = study_y[:, SUBTYPES.index(ANY)] == 1
    neg = ~pos
    edges = [-np.inf, *VISIBILITY_EDGES, np.inf]
    out = {}
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        part = pos & (dprime >= lo) & (dprime < hi)
        if lo == -np.inf:
            label = f"d' < {hi:g}"
        else:
            label = f"d' >= {lo:g}" if hi == np.inf else f"d' {lo:g}-{hi:g}"
        keep = part | neg
        auc = None
        if part.any() and neg.any():
            auc = metrics.finite_or_none(metrics.safe_auc(part[keep].astype(float), p_any[keep]))
        out[label] = {
            "studies": int(part.sum()),
            "sensitivity": _rate(int((flagged & part).sum()), int(part.sum())),
            "study_auc_any": auc,
        }
    return out


def study_table(
    studies: list[str],
    ids: list[list[str]],
    labels: np.ndarray,
    probs: np.ndarray,
    slice_probs: list[np.ndarray],
    thresholds: dict[str, float],
) -> pd.DataFrame:
    """One row per study, for looking at single studies: its StudyInstanceUID as the headers
    hold it, slice count, the slice with the highest ``any``, labels, probabilities and the
    flag with the subtypes it names (:func:`ichnode.triage.decide`)."""
    rows = []
    for study, sid_ids, y, p, sp in zip(studies, ids, labels, probs, slice_probs, strict=True):
        decision = decide(dict(zip(SUBTYPES, (float(v) for v in p), strict=True)), thresholds)
        rows.append(
            {"study": study, "slices": len(sid_ids)}
            | {"key_image": sid_ids[int(np.argmax(np.asarray(sp)[:, SUBTYPES.index(ANY)]))]}
            | {f"label_{n}": int(v) for n, v in zip(SUBTYPES, y, strict=True)}
            | {f"p_{n}": float(v) for n, v in zip(SUBTYPES, p, strict=True)}
            | {"flagged": int(decision.flagged), "named": " ".join(decision.labels)}
        )
    return pd.DataFrame(rows)


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
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    index = header_index(layout, ids, out / ".index", progress=progress)
    index = index[index["readable"].astype(bool)]
    indexed = set(index["id"])  # once: built per id it made this quadratic
    readable = [i for i in ids if i in indexed]
    ds = RSNADataset.from_table(layout, table, readable, ckpt.spec, index=index)
    skipped: set[str] = set(ids) - indexed
    dev = next(ckpt.model.parameters()).device
    seen, emb, logits, y_slices = embed_dataset(
        ckpt.model, make_loader(ds, batch_size, 0, None), ckpt.spec, dev, skipped,
        desc="evaluate",
    )  # fmt: skip
    if len(seen) == 0:
        raise DatasetError("no readable images to evaluate")
    studies = group_studies(index, seen, emb, logits, y_slices)
    z_by_id = index.set_index("id")["z"]
    slice_p, study_p, slice_ids = [], [], []
    low: list[bool] = []
    for sid_ids, e in zip(studies.ids, studies.emb, strict=True):
        scores = score_study(ckpt, e, [float(z_by_id[i]) for i in sid_ids])
        slice_p.append(scores.slices)
        study_p.append(scores.study)
        slice_ids.extend(sid_ids)
        n = len(sid_ids)
        low.extend(rank < max(1, round(LOW_SLICE_SHARE * n)) for rank in range(n))
    probs = np.concatenate(slice_p)
    y = np.concatenate(studies.y)
    study_probs, study_y = np.stack(study_p), studies.study_labels()
    prevalence = ckpt.summary.get("train_prevalence")
    source = "training" if prevalence else "evaluated data's"
    if not prevalence:
        prevalence = metrics.prevalence(y).tolist()
    slice_calls = over_threshold(probs, ckpt.thresholds)
    study_thresholds = ckpt.decision_thresholds
    flagged = over_threshold(study_probs, study_thresholds)[:, SUBTYPES.index(ANY)]
    breakdowns: dict = {
        "slice position": low_slice_breakdown(y, probs, np.array(low), ckpt.thresholds[ANY])
    }
    phantom = layout.csv.parent / SLICES_CSV  # per-slice position, bleed pixels
    if phantom.is_file():
        phantom_slices = pd.read_csv(phantom).set_index("image_id")
        bleed = phantom_slices["bleed_pixels"]
        per_study = np.array([float(bleed.reindex(s).fillna(0).max()) for s in studies.ids])
        breakdowns["bleed size"] = size_breakdown(study_y, flagged, per_study)
        if (layout.csv.parent / MASK_DIR).is_dir():  # how visible the blood is (d')
            phantom_study = phantom_slices["study"]
            wanted = {i for s in studies.ids for i in s}
            vis = study_visibility(folder_visibility(layout.csv.parent, wanted))["dprime"]
            dprime = np.array(
                [float(vis.get(phantom_study.get(s[0]), np.nan)) for s in studies.ids]
            )
            breakdowns["bleed visibility"] = visibility_breakdown(
                study_y, study_probs[:, SUBTYPES.index(ANY)], flagged, dprime
            )
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
            name: metrics.subtype_metrics(
                y[:, j], probs[:, j], ckpt.thresholds[name], slice_calls[:, j]
            )
            for j, name in enumerate(SUBTYPES)
        },
        study=study_metrics(study_y, study_probs, study_thresholds)
        | {"refined_by_study_model": ckpt.study is not None},
        breakdowns=breakdowns,
    )
    for name, m in report.subtypes.items():
        plots.confusion_heatmap(m.confusion, name, out / f"confusion_{name}.png")
        report.files.append(f"confusion_{name}.png")
    aucs = {k: v.roc_auc for k, v in report.subtypes.items()}
    plots.roc_curves(y, probs, aucs, out / "roc.png")
    study_aucs = {k: (v if v is not None else math.nan) for k, v in report.study["auc"].items()}
    plots.roc_curves(study_y, study_probs, study_aucs, out / "study_roc.png")
    plots.pr_curves(y, probs, out / "pr.png")
    plots.reliability_diagram(y, probs, out / "reliability.png")
    report.files += ["roc.png", "pr.png", "study_roc.png", "reliability.png"]
    study_of = index.set_index("id")["study"]
    study_table(
        [str(study_of[i[0]]) for i in studies.ids],
        studies.ids,
        study_y,
        study_probs,
        slice_p,
        study_thresholds,
    ).to_csv(out / STUDIES_CSV, index=False, float_format="%.6f")
    report.files.append(STUDIES_CSV)
    (out / "report.json").write_text(json.dumps(report.to_dict(), indent=1))
    (out / "report.md").write_text(report.markdown())
    log.info("evaluation written to %s", out)
    return report
