"""``ichnode predict``: score DICOM files one by one, or the studies of a folder, and render
the answers.

Given files, each slice is scored alone by the slice network. Given a folder, its CT files are
grouped by StudyInstanceUID and each study is scored as the node scores it
(:func:`ichnode.inference.score_study`: the study model over the slices in z order, refined
slice probabilities) and flagged by :func:`ichnode.triage.decide`.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from pydicom.dataset import Dataset

from ichnode.errors import IchnodeError, NotDicomError
from ichnode.imaging import (
    WINDOWS,
    PreprocessSpec,
    context_input,
    context_positions,
    preprocess,
    preprocess_hu,
    quiet_pydicom,
    read,
    to_hu,
)
from ichnode.inference import Predictor, SlicePrediction, score_study
from ichnode.node.selection import geometry
from ichnode.report.summary import draw_edge_letters, edge_letters, text_font
from ichnode.subtypes import DISPLAY_NAMES, SHORT_NAMES, SUBTYPES
from ichnode.triage import decide


@dataclass
class PredictRow:
    """The answer for one file: a prediction, or the one-line error that prevented it."""

    file: Path
    sop_instance_uid: str | None = None
    prediction: SlicePrediction | None = None
    error: str | None = None
    png: Path | None = None

    def to_json(self) -> dict[str, object]:
        if self.prediction is None:
            return {"file": str(self.file), "error": self.error}
        p = self.prediction
        return {
            "file": str(self.file),
            "sop_instance_uid": self.sop_instance_uid,
            "probabilities": {k: round(v, 6) for k, v in p.probabilities.items()},
            "predicted": p.predicted,
            "top_subtype": p.top_subtype,
        }


def predict_paths(
    files: Sequence[Path],
    model: Path | None = None,
    device: str = "auto",
    png: Path | None = None,
) -> list[PredictRow]:
    """Score each file; unreadable or non-CT files get an error row, the others a prediction."""
    predictor = Predictor(model, device)
    rows: list[PredictRow] = []
    for path in files:
        row = PredictRow(file=path)
        try:
            ds = read(path)
            row.sop_instance_uid = str(ds.get("SOPInstanceUID", "")) or None
            row.prediction = predictor.predict_datasets([ds])[0]
            if png is not None:
                row.png = _png_path(png, path, len(files))
                write_png(ds, row.prediction, row.png)
        except IchnodeError as exc:
            row.error = str(exc)
        rows.append(row)
    return rows


def png_target_error(target: Path, count: int) -> str | None:
    """Why ``--png TARGET`` cannot be written to (None when it can); nothing is created.

    One file scored and a ``.png`` name: that file, in a folder that exists. Otherwise an
    existing folder, one PNG per file in it.
    """
    if count == 1 and target.suffix.lower() == ".png":
        parent = target.parent
        if not parent.is_dir():
            return f"folder {parent} does not exist"
        if target.is_dir():
            return f"{target} is a folder"
        return None
    if not target.is_dir():
        what = "is not a folder" if target.exists() else "does not exist"
        return f"folder {target} {what} (a folder for the PNGs; create it first)"
    return None


def _png_path(target: Path, source: Path, count: int) -> Path:
    if count == 1 and target.suffix.lower() == ".png":
        return target
    return target / f"{source.stem}.png"


#: Opacity of the dark box behind the text of ``predict --png`` (0-255).
PNG_BACKING_ALPHA = 170
PNG_BACKING = (0, 0, 0)


def write_png(ds: Dataset, prediction: SlicePrediction, out: Path) -> None:
    """The slice in the brain window with the predicted subtypes and probabilities drawn on.

    The text sits on a semi-opaque dark box (readable over bone and over air), in a font
    scaled to the image (a 40th of its width, 12 px at least); the orientation letters
    (R/L, A/P from ImageOrientationPatient) are drawn at the edges.
    """
    img = (WINDOWS["brain"].apply(to_hu(ds)) * 255).astype(np.uint8)
    canvas = Image.fromarray(img).convert("RGBA")
    size = max(12, min(canvas.size) // 40)
    font = text_font(size)
    pad, gap = max(3, size // 4), max(2, size // 4)
    lines = [
        (f"{DISPLAY_NAMES[name]}: {prediction.probabilities[name]:.2f}", name) for name in SUBTYPES
    ]
    footer = "ichnode triage - not for diagnosis"
    layer = Image.new("RGBA", canvas.size, (0, 0, 0, 0))
    boxes = ImageDraw.Draw(layer)
    measure = ImageDraw.Draw(canvas)
    line_h = size + gap
    width = max(measure.textlength(text, font=font) for text, _ in lines)
    boxes.rectangle(
        (0, 0, int(width) + 2 * pad + 6, 4 + len(lines) * line_h + pad),
        fill=(*PNG_BACKING, PNG_BACKING_ALPHA),
    )
    foot_w = measure.textlength(footer, font=font)
    foot_y = canvas.height - size - 6
    boxes.rectangle(
        (0, foot_y - pad, int(foot_w) + 2 * pad + 6, canvas.height),
        fill=(*PNG_BACKING, PNG_BACKING_ALPHA),
    )
    canvas = Image.alpha_composite(canvas, layer).convert("RGB")
    draw = ImageDraw.Draw(canvas)
    y = 4
    for text, name in lines:
        hit = name in prediction.predicted
        colour = (255, 64, 64) if hit else (230, 230, 230)
        draw.text((6 + pad, y), text, fill=colour, font=font)
        y += line_h
    draw.text((6 + pad, foot_y), footer, fill=(255, 200, 0), font=font)
    letters = text_font(round(size * 1.4))  # larger than the text: read at a glance
    draw_edge_letters(draw, (0, 0, canvas.width, canvas.height), edge_letters(ds), letters)
    try:
        canvas.save(out)
    except OSError as exc:
        raise IchnodeError(f"cannot write {out}: {exc.strerror or exc}") from None


def render_json(rows: Sequence[PredictRow]) -> str:
    """The ``--json`` contract: one object per file (see README)."""
    return json.dumps([r.to_json() for r in rows], indent=2)


def render_table(rows: Sequence[PredictRow]) -> None:
    """A rich table on stdout; errors go to stderr, one line per file."""
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title="ichnode predict",
        caption="EDH epidural, IPH intraparenchymal, "
        "IVH intraventricular, SAH subarachnoid, SDH subdural",
    )
    table.add_column("file", no_wrap=True)
    for name in SUBTYPES:
        table.add_column(SHORT_NAMES[name], justify="right")
    table.add_column("predicted")
    table.add_column("top subtype")
    for r in rows:
        if r.prediction is None:  # one line, as is: no wrapping to the terminal width
            sys.stderr.write(f"error: {r.file}: {r.error}\n")
            continue
        p = r.prediction
        table.add_row(
            r.file.name,
            *(f"{p.probabilities[n]:.3f}" for n in SUBTYPES),
            ", ".join(p.predicted) or "-",
            p.top_subtype if p.predicted else "-",
        )
    if table.row_count:
        Console(width=None if sys.stdout.isatty() else 160).print(table)


@dataclass
class StudyRow:
    """The answer for one study of a folder: its flag, study probabilities and slices."""

    study_instance_uid: str
    probabilities: dict[str, float]
    flagged: bool
    flagged_subtypes: list[str]
    refined: bool
    slices: list[PredictRow]

    def to_json(self) -> dict[str, object]:
        return {
            "study_instance_uid": self.study_instance_uid,
            "flagged": self.flagged,
            "flagged_subtypes": self.flagged_subtypes,
            "probabilities": {k: round(v, 6) for k, v in self.probabilities.items()},
            "refined_by_study_model": self.refined,
            "slices": [r.to_json() for r in self.slices],
        }


@dataclass
class FolderScores:
    """The answer for a folder: its studies, the DICOM files that could not be scored (with
    their one-line errors), and how many files were skipped for not being DICOM at all (the
    CSV and bleed maps beside an ``ichnode synth`` or RSNA-layout folder's images)."""

    studies: list[StudyRow]
    errors: list[PredictRow]
    not_dicom: int = 0


def predict_folder(folder: Path, model: Path | None = None, device: str = "auto") -> FolderScores:
    """Score every study in ``folder`` (all DICOM files below it)."""
    with quiet_pydicom():  # RSNA files store ID_... strings in UID elements
        return _predict_folder(folder, Predictor(model, device))


def _predict_folder(folder: Path, predictor: Predictor) -> FolderScores:
    ckpt = predictor.checkpoint
    groups: dict[str, list[tuple[Path, Dataset, float | None]]] = {}
    errors: list[PredictRow] = []
    not_dicom = 0
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        try:
            ds = read(path)
            to_hu(ds)  # the same checks the node makes (CT, pixels, size)
        except NotDicomError:
            not_dicom += 1
            continue
        except IchnodeError as exc:
            errors.append(PredictRow(file=path, error=str(exc)))
            continue
        uid = str(ds.get("StudyInstanceUID", ""))
        groups.setdefault(uid, []).append((path, ds, geometry(ds).z))
    studies: list[StudyRow] = []
    for uid, members in groups.items():
        z = [z for _, _, z in members]
        batch = np.stack(_inputs([ds for _, ds, _ in members], z, ckpt.spec))
        embeddings, _ = predictor.embed_scores(batch)
        scores = score_study(ckpt, embeddings, z)
        probs = dict(zip(SUBTYPES, (float(v) for v in scores.study), strict=True))
        decision = decide(probs, ckpt.decision_thresholds)
        rows = [
            PredictRow(
                file=path,
                sop_instance_uid=str(ds.get("SOPInstanceUID", "")) or None,
                prediction=predictor.label(row),
            )
            for (path, ds, _), row in zip(members, scores.slices, strict=True)
        ]
        order = sorted(range(len(rows)), key=lambda i: (members[i][2] is None, members[i][2] or 0))
        studies.append(
            StudyRow(
                study_instance_uid=uid,
                probabilities=probs,
                flagged=decision.flagged,
                flagged_subtypes=list(decision.labels),
                refined=scores.refined,
                slices=[rows[i] for i in order],
            )
        )
    return FolderScores(studies, errors, not_dicom)


def _inputs(
    datasets: list[Dataset], z: list[float | None], spec: PreprocessSpec
) -> list[np.ndarray]:
    """Model inputs of one study's slices; for a 2.5-D spec each slice with its neighbours by
    z in its series, as the node takes them (:mod:`ichnode.db.context`)."""
    if not spec.context:
        return [preprocess(ds, spec) for ds in datasets]
    k = spec.context
    hu = [preprocess_hu(ds, spec) for ds in datasets]
    series: dict[str, list[int]] = {}
    for i, ds in enumerate(datasets):
        series.setdefault(str(ds.get("SeriesInstanceUID", "")), []).append(i)
    out: list[np.ndarray] = [np.empty(0)] * len(datasets)
    for members in series.values():
        placed = sorted((i for i in members if z[i] is not None), key=lambda i: (z[i], i))
        position = {i: pos for pos, i in enumerate(placed)}
        for i in members:
            if i not in position:  # no z: the slice alone
                out[i] = context_input(hu[i], [None] * (2 * k), spec)
                continue
            around = context_positions(position[i], len(placed), k)
            out[i] = context_input(
                hu[i], [None if j is None else hu[placed[j]] for j in around], spec
            )
    return out


def render_studies_json(scores: FolderScores) -> str:
    """``--json`` for a folder: ``{"studies": [...], "errors": [...], "not_dicom": N}``."""
    return json.dumps(
        {
            "studies": [s.to_json() for s in scores.studies],
            "errors": [e.to_json() for e in scores.errors],
            "not_dicom": scores.not_dicom,
        },
        indent=2,
    )


def render_studies(scores: FolderScores) -> None:
    """One line per study (flag, subtypes, study probabilities), then its slices' table."""
    from rich.console import Console

    studies, errors = scores.studies, scores.errors
    out = Console(width=None if sys.stdout.isatty() else 160, highlight=False)
    if scores.not_dicom:
        out.print(f"skipped {scores.not_dicom} files that are not DICOM", markup=False)
    for st in studies:
        call = "FLAGGED: " + ", ".join(st.flagged_subtypes) if st.flagged else "not flagged"
        probs = "  ".join(f"{SHORT_NAMES[n]} {st.probabilities[n]:.3f}" for n in SUBTYPES)
        out.print(
            f"study {st.study_instance_uid}: {call} ({len(st.slices)} slices; {probs})",
            markup=False,
        )
    render_table([*(r for st in studies for r in st.slices), *errors])
