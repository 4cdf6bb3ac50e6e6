"""The summary image: the key slice in the brain window with the findings burned in.

An RGB Secondary Capture (highdicom ``SCImage``) in the same study, in its own series: the
key slice (brain window 40/80) with the orientation letters at its edges (R/L, A/P from
ImageOrientationPatient), the saliency map as an alpha-blended heat map when given (confined to
the head: :func:`ichnode.report.saliency.mask_to_head`), and
below it a panel with one line per label (probability, threshold call; flagged labels on red)
and the disclaimer. Any viewer shows it, which is the point: the SR needs an SR-aware viewer.
"""

from __future__ import annotations

import logging

import highdicom as hd
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset

from ichnode.imaging import WINDOWS, first_frame_value, resize, to_hu
from ichnode.report.findings import ReportError, StudyFindings, check_uid
from ichnode.report.saliency import overlay
from ichnode.report.sr import DISCLAIMER, MANUFACTURER, STUDY_ATTRIBUTES
from ichnode.subtypes import DISPLAY_NAMES, SUBTYPES

log = logging.getLogger(__name__)

SUMMARY_SERIES_DESCRIPTION = "ichnode ICH summary (not for diagnosis)"
SUMMARY_SERIES_NUMBER = 9902
#: Side of the rendered slice in pixels; the text panel is added below it.
IMAGE_SIZE = 512
PANEL_HEIGHT = 236
FONT_SIZE = 18
TITLE_FONT_SIZE = 20
#: Heat map: colour map, and the opacity at saliency 1 (opacity scales with saliency).

FLAG_FILL = (200, 30, 30)
TEXT = (235, 235, 235)
DIM_TEXT = (150, 150, 150)
WARN_TEXT = (255, 210, 60)
PANEL_FILL = (20, 20, 20)
LETTER_TEXT = (255, 255, 255)
LETTER_BACKING = (0, 0, 0)


def text_font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's bundled default font (scalable since Pillow 10.1; bitmap before)."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


#: Patient direction letters of the DICOM patient axes (+x left, +y posterior, +z head).
_AXIS_LETTERS = (("L", "R"), ("P", "A"), ("H", "F"))


def _iop(ds: Dataset) -> list[float]:
    """ImageOrientationPatient of the first frame (axial when absent or malformed)."""
    found = first_frame_value(ds, "ImageOrientationPatient", "PlaneOrientationSequence")
    try:
        iop = [float(v) for v in found]
    except (TypeError, ValueError):
        iop = []
    return iop if len(iop) == 6 and all(np.isfinite(iop)) else [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]


def direction_letters(vec: object) -> str:
    """Patient direction of a unit vector: ``[1, 0, 0]`` -> ``L``, ``[0, -1, 0]`` -> ``A``;
    an oblique one gets two or three letters, largest component first (``[0.8, 0.6, 0]``
    -> ``LP``)."""
    v = np.asarray(vec, dtype=float)
    order = np.argsort(-np.abs(v), kind="stable")
    letters = [
        _AXIS_LETTERS[axis][0 if v[axis] > 0 else 1]
        for axis in order
        if abs(v[axis]) >= 0.25 or axis == order[0]
    ]
    return "".join(letters)


def edge_letters(ds: Dataset) -> dict[str, str]:
    """The letters at the image's edges: ``{"left", "right", "top", "bottom"}``.

    The row vector of ImageOrientationPatient points to the right edge, the column vector to
    the bottom: a standard axial slice reads R on the left, L on the right, A on top and P at
    the bottom (radiological convention).
    """
    iop = _iop(ds)
    row, col = np.asarray(iop[:3]), np.asarray(iop[3:])
    return {
        "left": direction_letters(-row),
        "right": direction_letters(row),
        "top": direction_letters(-col),
        "bottom": direction_letters(col),
    }


def draw_edge_letters(
    draw: ImageDraw.ImageDraw,
    box: tuple[int, int, int, int],
    letters: dict[str, str],
    font: ImageFont.ImageFont | ImageFont.FreeTypeFont,
    margin: int = 6,
    inset: tuple[int, int] = (0, 0),
) -> None:
    """Draw ``letters`` at the middle of each edge of ``box`` (x0, y0, x1, y1), on a dark
    backing box; ``inset`` moves the top and bottom letters inwards (past other text)."""
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
    for edge, text in letters.items():
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        w, h = right - left, bottom - top
        x, y = {
            "left": (x0 + margin, cy - h // 2),
            "right": (x1 - margin - w, cy - h // 2),
            "top": (cx - w // 2, y0 + margin + inset[0]),
            "bottom": (cx - w // 2, y1 - margin - h - inset[1]),
        }[edge]
        draw.rectangle((x - 3, y - 3, x + w + 3, y + h + 3), fill=LETTER_BACKING)
        draw.text((x - left, y - top), text, font=font, fill=LETTER_TEXT)


def _orientation(ds: Dataset) -> tuple[str, str]:
    """PatientOrientation: direction of the rows (first) and of the columns (second)."""
    iop = _iop(ds)
    return direction_letters(iop[:3])[0], direction_letters(iop[3:])[0]


def render(
    key: Dataset,
    findings: StudyFindings,
    saliency: np.ndarray | None = None,
    saliency_label: str | None = None,
) -> np.ndarray:
    """The summary picture as ``uint8 (IMAGE_SIZE + PANEL_HEIGHT, IMAGE_SIZE, 3)``."""
    hu = to_hu(key)
    gray = resize(WINDOWS["brain"].apply(hu)[None], IMAGE_SIZE)[0]
    if saliency is not None:
        rgb = overlay(gray, saliency, hu)
    else:
        rgb = np.repeat(gray[..., None], 3, axis=2)
    canvas = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE + PANEL_HEIGHT), PANEL_FILL)
    canvas.paste(Image.fromarray((rgb * 255.0 + 0.5).astype(np.uint8)), (0, 0))
    draw = ImageDraw.Draw(canvas)
    font, title = text_font(FONT_SIZE), text_font(TITLE_FONT_SIZE)

    draw.text((8, 6), f"{DISCLAIMER} - ichnode", font=title, fill=WARN_TEXT)
    # Below the disclaimer line and above the heat-map line.
    draw_edge_letters(
        draw, (0, 0, IMAGE_SIZE, IMAGE_SIZE), edge_letters(key), title, inset=(26, 26)
    )
    if saliency is not None and saliency_label:
        draw.text(
            (8, IMAGE_SIZE - FONT_SIZE - 8),
            f"Heat map: where the model looked for {DISPLAY_NAMES[saliency_label].lower()}",
            font=text_font(FONT_SIZE - 2),
            fill=WARN_TEXT,
        )
    y = IMAGE_SIZE + 8
    draw.text((8, y), findings.summary_line(), font=title, fill=TEXT)
    y += TITLE_FONT_SIZE + 10
    row = FONT_SIZE + 6
    for name in SUBTYPES:
        p, flagged = findings.probabilities[name], findings.flagged[name]
        label = f"{DISPLAY_NAMES[name]:<30}"
        call = "FLAGGED" if flagged else "-"
        if flagged:
            draw.rectangle((4, y - 2, IMAGE_SIZE - 4, y + row - 4), fill=FLAG_FILL)
        colour = TEXT if flagged else DIM_TEXT
        draw.text((10, y), label, font=font, fill=colour)
        draw.text((340, y), f"{p:5.1%}", font=font, fill=colour)
        draw.text((420, y), call, font=font, fill=colour)
        y += row
    draw.text(
        (8, IMAGE_SIZE + PANEL_HEIGHT - FONT_SIZE - 8),
        f"{DISCLAIMER}. Model {findings.model_id}, result v{findings.version}",
        font=text_font(FONT_SIZE - 4),
        fill=WARN_TEXT,
    )
    return np.asarray(canvas, dtype=np.uint8)


def build_summary(
    key: Dataset,
    findings: StudyFindings,
    *,
    saliency: np.ndarray | None = None,
    saliency_label: str | None = None,
    series_instance_uid: str | None = None,
    instance_number: int = 1,
) -> Dataset:
    """The RGB Secondary Capture summary of ``findings`` on the key slice ``key``.

    ``key`` must be the key slice with its pixel data; ``saliency`` a 2-D map in [0, 1] over
    the key slice padded to a square (:func:`ichnode.imaging.input_to_display` maps a
    :func:`ichnode.report.saliency.grad_cam` map there), computed for the label
    ``saliency_label`` (named on the image; default
    :attr:`StudyFindings.saliency_subtype`).
    """
    if not isinstance(findings, StudyFindings):
        raise ReportError(f"findings must be a StudyFindings, got {type(findings).__name__}")
    if not isinstance(key, Dataset):
        raise ReportError(f"key must be a pydicom Dataset, got {type(key).__name__}")
    for keyword in ("SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID", *STUDY_ATTRIBUTES):
        if keyword not in key:
            raise ReportError(f"key has no {keyword}")
    if str(key.SOPInstanceUID) != findings.key_sop_instance_uid:
        raise ReportError("key is not the slice named by findings.key_sop_instance_uid")
    if "PixelData" not in key:
        raise ReportError("key has no pixel data (read it without stop_before_pixels)")
    if saliency is not None:
        saliency = np.asarray(saliency)
        if saliency.ndim != 2 or not np.issubdtype(saliency.dtype, np.number):
            raise ReportError(f"saliency must be a 2-D numeric array, got shape {saliency.shape}")
        if not np.all(np.isfinite(saliency)):
            raise ReportError("saliency contains NaN or infinite values")
        saliency_label = saliency_label or findings.saliency_subtype
        if saliency_label not in DISPLAY_NAMES:
            raise ReportError(f"saliency_label {saliency_label!r} is not a label")
    if isinstance(instance_number, bool) or not isinstance(instance_number, int):
        raise ReportError(f"instance_number must be an integer, got {instance_number!r}")
    if series_instance_uid is None:
        series_instance_uid = hd.UID()
    check_uid(series_instance_uid, "series_instance_uid")
    if series_instance_uid == str(key.SeriesInstanceUID):
        raise ReportError("series_instance_uid must not be the series of the key slice")

    pixels = render(key, findings, saliency, saliency_label)
    sc = hd.sc.SCImage(
        pixel_array=pixels,
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        study_instance_uid=str(key.StudyInstanceUID),
        series_instance_uid=series_instance_uid,
        series_number=SUMMARY_SERIES_NUMBER,
        sop_instance_uid=hd.UID(),
        instance_number=instance_number,
        manufacturer=MANUFACTURER,
        patient_id=key.PatientID,
        patient_name=key.PatientName,
        patient_birth_date=key.PatientBirthDate,
        patient_sex=key.PatientSex,
        accession_number=key.AccessionNumber,
        study_id=key.StudyID,
        study_date=key.StudyDate,
        study_time=key.StudyTime,
        referring_physician_name=key.ReferringPhysicianName,
        patient_orientation=_orientation(key),
        series_description=SUMMARY_SERIES_DESCRIPTION,
        software_versions=findings.ichnode_version,
        manufacturer_model_name=findings.model_id[:64],
    )
    if "SpecificCharacterSet" in key:
        sc.SpecificCharacterSet = key.SpecificCharacterSet
    # General Series Type 2C; dciodvfy cannot evaluate the condition and wants it present.
    sc.Laterality = ""
    sc.BurnedInAnnotation = "YES"
    sc.RecognizableVisualFeatures = "NO"
    sc.ImageType = ["DERIVED", "SECONDARY"]
    sc.ImageComments = f"{DISCLAIMER}. {findings.summary_line()}."
    sc.DerivationDescription = (
        "Key slice in brain window 40/80 with automated ICH triage results burned in"
        + (
            f" and Grad-CAM saliency overlay for {DISPLAY_NAMES[str(saliency_label)].lower()}"
            if saliency is not None  # saliency_label is set (checked above) whenever it is
            else ""
        )
    )[:1024]
    source = Dataset()
    source.ReferencedSOPClassUID = key.SOPClassUID
    source.ReferencedSOPInstanceUID = key.SOPInstanceUID
    sc.SourceImageSequence = [source]
    return sc
