"""Bleed visibility (phantoms.visibility): contrast over a ring, noise, detectability index."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from phantoms.synth import generate
from phantoms.visibility import folder_visibility, slice_visibility, study_visibility


def _disk(size: int = 128, radius: float = 6.0) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    return (yy - size / 2) ** 2 + (xx - size / 2) ** 2 <= radius**2


def test_a_bleed_brighter_than_its_noise_has_the_ideal_observers_index():
    rng = np.random.default_rng(0)
    hu = 35.0 + rng.normal(0.0, 5.0, (128, 128))
    bleed = _disk()
    hu[bleed] += 20.0
    n, contrast, sd, dprime = slice_visibility(hu, bleed)
    assert n == bleed.sum()
    assert contrast == pytest.approx(20.0, abs=1.5)
    assert sd == pytest.approx(5.0, rel=0.15)
    assert dprime == pytest.approx(20.0 / 5.0 * np.sqrt(n), rel=0.2)


def test_blood_as_dense_as_its_surroundings_is_invisible_and_bone_does_not_count():
    rng = np.random.default_rng(1)
    hu = 35.0 + rng.normal(0.0, 5.0, (128, 128))
    bleed = _disk()
    hu[:, 70:] = 1400.0  # skull beside the bleed: neither blood nor ring
    _, contrast, _, dprime = slice_visibility(hu, bleed)
    assert abs(contrast) < 2.0 and abs(dprime) < 3.0


def test_no_soft_tissue_in_the_bleed_gives_none():
    hu = np.full((64, 64), 1400.0)
    assert slice_visibility(hu, _disk(64, 4.0)) is None


def test_every_bleeding_phantom_slice_is_measured_and_a_study_takes_its_most_visible(tmp_path):
    generate(tmp_path, studies=4, size=64, seed=5, progress=False)
    per_slice = folder_visibility(tmp_path)
    slices = pd.read_csv(tmp_path / "phantom_slices.csv")
    bleeding = slices[slices["bleed_pixels"] > 0]
    assert set(per_slice["image_id"]) <= set(bleeding["image_id"])
    assert len(per_slice) >= 0.8 * len(bleeding)  # a few lie in bone only
    per_study = study_visibility(per_slice)
    for study, row in per_study.iterrows():
        assert row["dprime"] == per_slice.loc[per_slice["study"] == study, "dprime"].max()


def test_the_visibility_breakdown_judges_each_bin_against_every_normal_study():
    from training.evaluate import visibility_breakdown

    y = np.zeros((5, 6))
    y[:3, :] = 1  # three bleeding studies (d' 5, 15, 100), two normal
    p_any = np.array([0.2, 0.9, 0.8, 0.5, 0.1])
    flagged = p_any >= 0.4
    dprime = np.array([5.0, 15.0, 100.0, np.nan, np.nan])
    out = visibility_breakdown(y, p_any, flagged, dprime)
    assert out["d' < 10"] == {"studies": 1, "sensitivity": 0.0, "study_auc_any": 0.5}
    assert out["d' 10-20"] == {"studies": 1, "sensitivity": 1.0, "study_auc_any": 1.0}
    assert out["d' 20-40"] == {"studies": 0, "sensitivity": None, "study_auc_any": None}
    assert out["d' >= 80"]["study_auc_any"] == 1.0


def test_each_storage_of_the_same_study_gives_the_same_visibility(tmp_path):
    # The RSNA 12-bit quirk (stored values wrapped, intercept -1024 written) must be read as
    # Hounsfield units like the others; read naively its blood came out in the thousands.
    from phantoms.synth import IMAGE_DIR, MASK_DIR, STORAGES, synth_study, write_mask

    measured = {}
    for storage in STORAGES:
        folder = tmp_path / storage
        (folder / IMAGE_DIR).mkdir(parents=True)
        (folder / MASK_DIR).mkdir()
        rows = ["image_id,study,bleed_pixels"]
        for s in synth_study(4, n_slices=12, size=64, subtypes=("intraparenchymal",),
                             storage=storage):  # fmt: skip
            s.dataset.save_as(folder / IMAGE_DIR / f"{s.image_id}.dcm", enforce_file_format=True)
            write_mask(folder / MASK_DIR / f"{s.image_id}.png", s.bleed)
            rows.append(f"{s.image_id},study,{int((s.bleed > 0).sum())}")
        (folder / "phantom_slices.csv").write_text("\n".join(rows) + "\n")
        measured[storage] = folder_visibility(folder)[["pixels", "contrast", "dprime"]]
    first = measured[STORAGES[0]]
    assert not first.empty and (first["contrast"] > 10).all()  # blood over its surroundings
    for storage in STORAGES[1:]:
        pd.testing.assert_frame_equal(measured[storage], first)


def test_the_blood_hu_a_study_shows_at_best_is_blood_dense_for_a_plain_bleed(tmp_path):
    from phantoms.visibility import study_blood_hu, study_ideal_dprime

    generate(tmp_path, studies=6, size=128, seed=2, progress=False)
    slices = pd.read_csv(tmp_path / "phantom_slices.csv", dtype={"study": str})
    bleeding = set(slices.loc[slices["bleed_pixels"] > 0, "study"])
    blood = study_blood_hu(tmp_path)
    assert set(blood.index) == bleeding and len(bleeding) > 0
    assert (blood < 100).all() and blood.max() > 45  # blood, not bone; one plainly dense
    ideal = study_ideal_dprime(tmp_path)
    assert (ideal[list(bleeding)] > 0).all()
    assert (ideal.drop(list(bleeding)) == 0).all()
