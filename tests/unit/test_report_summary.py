"""The summary Secondary Capture: valid DICOM, same study, readable burned-in findings."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
from pydicom.dataset import Dataset
from report_fixtures import dciodvfy, make_findings, roundtrip, synth_ct_study

from ichnode.report import ReportError, StudyFindings, build_summary
from ichnode.report.summary import (
    FLAG_FILL,
    IMAGE_SIZE,
    PANEL_HEIGHT,
    _orientation,
    direction_letters,
    edge_letters,
    render,
)


@pytest.fixture(scope="module")
def study():
    return synth_ct_study(n_slices=3)


@pytest.fixture(scope="module")
def key(study):
    return study[1]


@pytest.fixture(scope="module")
def findings(key):
    return make_findings(str(key.SOPInstanceUID))


def _saliency() -> np.ndarray:
    s = np.zeros((224, 224), np.float32)
    s[60:120, 120:180] = 1.0
    return s


def test_summary_round_trips_and_passes_dciodvfy(key, findings, tmp_path):
    sc = build_summary(key, findings, saliency=_saliency())
    back = roundtrip(sc)
    assert back.pixel_array.shape == (IMAGE_SIZE + PANEL_HEIGHT, IMAGE_SIZE, 3)
    errors, _ = dciodvfy(sc, tmp_path, "summary")
    assert errors == []


def test_summary_files_into_the_study_in_its_own_series(key, findings):
    sc = build_summary(key, findings)
    for keyword in ("StudyInstanceUID", "PatientID", "PatientName", "AccessionNumber", "StudyID"):
        assert sc[keyword].value == key[keyword].value
    assert sc.SeriesInstanceUID != key.SeriesInstanceUID
    assert sc.BurnedInAnnotation == "YES"
    assert sc.PhotometricInterpretation == "RGB"
    assert "not for diagnosis" in sc.SeriesDescription
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == key.SOPInstanceUID


def test_flagged_rows_are_highlighted(key, findings):
    img = render(key, findings)
    panel = img[IMAGE_SIZE:]
    red_rows = np.all(panel == np.array(FLAG_FILL, np.uint8), axis=2).any(axis=1).sum()
    assert red_rows > 0
    negative = render(key, make_findings(findings.key_sop_instance_uid, positive=False))
    assert not np.all(negative[IMAGE_SIZE:] == np.array(FLAG_FILL, np.uint8), axis=2).any()


def test_saliency_colours_only_where_it_is_high(key, findings):
    plain = render(key, findings).astype(int)
    overlay = render(key, findings, saliency=_saliency()).astype(int)
    hot = np.abs(overlay - plain)[: IMAGE_SIZE // 2, IMAGE_SIZE // 2 + 40 :].sum()
    cold = np.abs(overlay - plain)[IMAGE_SIZE - 100 : IMAGE_SIZE, :100].sum()
    assert hot > 0 and cold == 0


def test_image_is_grayscale_where_nothing_is_drawn(key, findings):
    img = render(key, findings)
    centre = img[IMAGE_SIZE // 2 + 60 : IMAGE_SIZE // 2 + 80, 200:220]
    assert np.all(centre[..., 0] == centre[..., 1])


def test_key_must_match_findings(study, findings):
    with pytest.raises(ReportError, match="key_sop_instance_uid"):
        build_summary(study[0], findings)


def test_saliency_must_be_two_dimensional(key, findings):
    with pytest.raises(ReportError, match="saliency"):
        build_summary(key, findings, saliency=np.zeros((3, 8, 8)))


def test_key_without_pixels_is_refused(key, findings):
    header = copy.deepcopy(key)
    del header.PixelData
    with pytest.raises(ReportError, match="pixel data"):
        build_summary(header, findings)


def test_the_heat_map_explains_the_flagged_subtype_furthest_above_its_threshold(key, findings):
    # subdural 0.91 is flagged (threshold 0.5); subarachnoid 0.40 is not; any is not a subtype.
    assert findings.saliency_subtype == "subdural"
    sc = build_summary(key, findings, saliency=_saliency())
    assert sc.DerivationDescription.endswith("Grad-CAM saliency overlay for subdural hemorrhage")
    probs = dict(findings.probabilities, epidural=0.30)
    thresholds = dict(findings.thresholds, epidural=0.1)  # 3x its threshold beats 1.8x
    both = StudyFindings(**{**_fields(findings), "probabilities": probs, "thresholds": thresholds})
    assert both.saliency_subtype == "epidural"
    negative = make_findings(findings.key_sop_instance_uid, positive=False)
    assert negative.saliency_subtype == "any"
    assert (
        "overlay for intracranial hemorrhage (any)"
        in build_summary(key, negative, saliency=_saliency()).DerivationDescription
    )


def test_the_heat_map_label_is_checked(key, findings):
    with pytest.raises(ReportError, match="saliency_label 'bleed' is not a label"):
        build_summary(key, findings, saliency=_saliency(), saliency_label="bleed")


def _fields(findings: StudyFindings) -> dict:
    return {f.name: getattr(findings, f.name) for f in dataclasses.fields(findings) if f.init}


# --- orientation letters and the head mask -------------------------------------------------


@pytest.mark.parametrize(
    ("iop", "expected"),
    [
        ([1, 0, 0, 0, 1, 0], {"left": "R", "right": "L", "top": "A", "bottom": "P"}),
        ([-1, 0, 0, 0, -1, 0], {"left": "L", "right": "R", "top": "P", "bottom": "A"}),
        ([1, 0, 0, 0, 0, -1], {"left": "R", "right": "L", "top": "H", "bottom": "F"}),
        ([0, 1, 0, 0, 0, -1], {"left": "A", "right": "P", "top": "H", "bottom": "F"}),
        ([0.8, 0.6, 0, -0.6, 0.8, 0], {"left": "RA", "right": "LP", "top": "AL", "bottom": "PR"}),
    ],
)
def test_edge_letters_follow_image_orientation_patient(iop, expected):
    ds = copy.deepcopy(synth_ct_study(n_slices=1, size=16)[0])
    ds.ImageOrientationPatient = iop
    assert edge_letters(ds) == expected
    assert direction_letters(iop[:3])[0] == _orientation(ds)[0]


def test_edge_letters_of_enhanced_ct_come_from_the_plane_orientation_sequence():
    ds = copy.deepcopy(synth_ct_study(n_slices=1, size=16)[0])
    del ds.ImageOrientationPatient
    plane, group = Dataset(), Dataset()
    plane.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
    group.PlaneOrientationSequence = [plane]
    ds.SharedFunctionalGroupsSequence = [group]
    assert edge_letters(ds) == {"left": "R", "right": "L", "top": "H", "bottom": "F"}


def _letter_box(img: np.ndarray, edge: str) -> np.ndarray:
    mid, band = IMAGE_SIZE // 2, 40
    return {
        "left": img[mid - band : mid + band, :band],
        "right": img[mid - band : mid + band, IMAGE_SIZE - band : IMAGE_SIZE],
        "top": img[20:80, mid - band : mid + band],
        "bottom": img[IMAGE_SIZE - 80 : IMAGE_SIZE - 20, mid - band : mid + band],
    }[edge]


def test_orientation_letters_are_burned_in_at_the_edges(key, findings):
    img = render(key, findings)
    for edge in ("left", "right", "top", "bottom"):
        box = _letter_box(img, edge)
        assert np.all(box == 255, axis=2).sum() > 10, f"no letter at the {edge} edge"
    # A coronal slice reads H on top instead of A; the left edge still reads R.
    coronal = copy.deepcopy(key)
    coronal.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
    other = render(coronal, findings)
    assert not np.array_equal(_letter_box(img, "top"), _letter_box(other, "top"))
    assert np.array_equal(_letter_box(img, "left"), _letter_box(other, "left"))


def test_saliency_is_not_drawn_over_the_air_around_the_head(key, findings):
    everywhere = np.ones((224, 224), np.float32)
    plain = render(key, findings).astype(int)
    overlay = render(key, findings, saliency=everywhere).astype(int)
    diff = np.abs(overlay - plain)[:IMAGE_SIZE].sum(axis=2)
    # synth_ct_study: the head is a disc of radius 0.45 * side around the centre.
    yy, xx = np.mgrid[:IMAGE_SIZE, :IMAGE_SIZE]
    r = np.hypot(yy - IMAGE_SIZE / 2, xx - IMAGE_SIZE / 2) / IMAGE_SIZE
    assert diff[r > 0.5].max() == 0  # the 64 px disc, enlarged, has soft edges
    assert diff[r < 0.3].min() > 0
