"""``ichnode predict``: score DICOM files one by one and render the answers."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset

from ichnode.errors import IchnodeError
from ichnode.imaging import WINDOWS, read, to_hu
from ichnode.inference import Predictor, SlicePrediction
from ichnode.subtypes import DISPLAY_NAMES, SHORT_NAMES, SUBTYPES


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


def _png_path(target: Path, source: Path, count: int) -> Path:
    if count == 1 and target.suffix.lower() == ".png":
        return target
    target.mkdir(parents=True, exist_ok=True)
    return target / f"{source.stem}.png"


def write_png(ds: Dataset, prediction: SlicePrediction, out: Path) -> None:
    """The slice in the brain window with the predicted subtypes and probabilities drawn on."""
    img = (WINDOWS["brain"].apply(to_hu(ds)) * 255).astype(np.uint8)
    canvas = Image.fromarray(img).convert("RGB")
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=max(12, canvas.width // 40))
    y = 4
    for name in SUBTYPES:
        prob = prediction.probabilities[name]
        hit = name in prediction.predicted
        colour = (255, 64, 64) if hit else (230, 230, 230)
        draw.text((6, y), f"{DISPLAY_NAMES[name]}: {prob:.2f}", fill=colour, font=font)
        y += font.size + 4
    draw.text(
        (6, canvas.height - font.size - 6),
        "ichnode triage - not for diagnosis",
        fill=(255, 200, 0),
        font=font,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out)


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
    err = Console(stderr=True)
    for r in rows:
        if r.prediction is None:
            err.print(f"error: {r.file}: {r.error}", markup=False, highlight=False)
            continue
        p = r.prediction
        table.add_row(
            r.file.name,
            *(f"{p.probabilities[n]:.3f}" for n in SUBTYPES),
            ", ".join(p.predicted) or "-",
            p.top_subtype,
        )
    if table.row_count:
        Console(width=None if sys.stdout.isatty() else 160).print(table)
