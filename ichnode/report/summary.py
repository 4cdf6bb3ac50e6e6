"""The summary image: the key slice in the brain window with the findings burned in.

An RGB Secondary Capture (highdicom ``SCImage``) in the same study, in its own series: the
key slice (brain window 40/80), the saliency map as an alpha-blended heat map when given, and
below it a panel with one line per label (probability, threshold call; flagged labels on red)
and the disclaimer. Any viewer shows it, which is the point: the SR needs an SR-aware viewer.
"""

from __future__ import annotations

import logging

import highdicom as hd
import numpy as np
from matplotlib import colormaps
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset

from ichnode.imaging import WINDOWS, first_frame_value, resize, to_hu
from ichnode.report.findings import ReportError, StudyFindings, check_uid
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
HEATMAP = "jet"
HEATMAP_MAX_ALPHA = 0.5

FLAG_FILL = (200, 30, 30)
TEXT = (235, 235, 235)
DIM_TEXT = (150, 150, 150)
WARN_TEXT = (255, 210, 60)
PANEL_FILL = (20, 20, 20)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's bundled default font (scalable since Pillow 10.1; bitmap before)."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def _orientation(ds: Dataset) -> tuple[str, str]:
    """Patient orientation letters of rows and columns from ImageOrientationPatient."""
    found = first_frame_value(ds, "ImageOrientationPatient", "PlaneOrientationSequence")
    iop = [float(v) for v in (found or [1, 0, 0, 0, 1, 0])]
    letters = (("L", "R"), ("P", "A"), ("H", "F"))

    def letter(vec: list[float]) -> str:
        axis = int(np.argmax(np.abs(vec)))
        return letters[axis][0] if vec[axis] > 0 else letters[axis][1]

    # PatientOrientation: direction of the rows (first) and of the columns (second).
    return letter(iop[:3]), letter(iop[3:])


def render(
    key: Dataset,
    findings: StudyFindings,
    saliency: np.ndarray | None = None,
    saliency_label: str | None = None,
) -> np.ndarray:
    """The summary picture as ``uint8 (IMAGE_SIZE + PANEL_HEIGHT, IMAGE_SIZE, 3)``."""
    brain = WINDOWS["brain"].apply(to_hu(key))
    gray = resize(brain[None], IMAGE_SIZE)[0]
    rgb = np.repeat(gray[..., None], 3, axis=2)
    if saliency is not None:
        heat = resize(np.clip(saliency, 0.0, 1.0)[None].astype(np.float32), IMAGE_SIZE)[0]
        colour = colormaps[HEATMAP](heat)[..., :3]
        alpha = (HEATMAP_MAX_ALPHA * heat)[..., None]
        rgb = (1.0 - alpha) * rgb + alpha * colour
    canvas = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE + PANEL_HEIGHT), PANEL_FILL)
    canvas.paste(Image.fromarray((rgb * 255.0 + 0.5).astype(np.uint8)), (0, 0))
    draw = ImageDraw.Draw(canvas)
    font, title = _font(FONT_SIZE), _font(TITLE_FONT_SIZE)

    draw.text((8, 6), f"{DISCLAIMER} - ichnode", font=title, fill=WARN_TEXT)
    if saliency is not None and saliency_label:
        draw.text(
            (8, IMAGE_SIZE - FONT_SIZE - 8),
            f"Heat map: where the model looked for {DISPLAY_NAMES[saliency_label].lower()}",
            font=_font(FONT_SIZE - 2),
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
        font=_font(FONT_SIZE - 4),
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

    ``key`` must be the key slice with its pixel data; ``saliency`` a 2-D map in [0, 1] of
    the model input (square, as :func:`ichnode.report.saliency.grad_cam` returns), computed
    for the label ``saliency_label`` (named on the image; default
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
            f" and Grad-CAM saliency overlay for {DISPLAY_NAMES[saliency_label].lower()}"
            if saliency is not None  # saliency_label is set (checked above) whenever it is
            else ""
        )
    )[:1024]
    source = Dataset()
    source.ReferencedSOPClassUID = key.SOPClassUID
    source.ReferencedSOPInstanceUID = key.SOPInstanceUID
    sc.SourceImageSequence = [source]
    return sc
