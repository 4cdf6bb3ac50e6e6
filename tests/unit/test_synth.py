"""The synthetic head-CT generator: RSNA layout, determinism, HU storage, anatomy, bleeds,
mimics, presets, per-slice metadata, CLI."""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian
from scipy import ndimage
from typer.testing import CliRunner

from ichnode import subtypes as st
from ichnode.cli import app
from ichnode.imaging import needs_rsna_12bit_fix, to_hu
from phantoms import synth
from phantoms.anatomy import Tissue
from phantoms.presets import HELDOUT_PRESET, PRESETS, TRAIN_PRESET, range_fields
from phantoms.scanner import min_bleed_pixels
from phantoms.synth import SLICES_COLUMNS, SLICES_CSV, STORAGES, generate, read_mask, synth_study

# RSNA's ID_... identifiers are not valid UI values; pydicom warns when it reads them.
pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR UI")

RSNA_SOP_ID = re.compile(r"^ID_[0-9a-f]{9}$")
RSNA_ID = re.compile(r"^ID_[0-9a-f]+$")


def _round_trip(ds: pydicom.Dataset) -> pydicom.Dataset:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return pydicom.dcmread(io.BytesIO(buf.getvalue()))


def _read_csv(path: Path) -> list[tuple[str, str]]:
    with path.open(newline="") as fh:
        reader = csv.reader(fh)
        assert next(reader) == ["ID", "Label"]
        return [(row[0], row[1]) for row in reader]


@pytest.fixture(scope="module")
def small_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    generate(out, studies=3, seed=7, size=96, progress=False)
    return out


def test_generate_writes_six_csv_rows_per_slice_in_subtype_order(small_run: Path) -> None:
    rows = _read_csv(small_run / "stage_2_train.csv")
    files = sorted(p.stem for p in (small_run / "stage_2_train").glob("*.dcm"))
    assert len(rows) == 6 * len(files) > 0
    for i in range(0, len(rows), 6):
        group = rows[i : i + 6]
        prefix = group[0][0].rsplit("_", 1)[0]
        assert [ident for ident, _ in group] == [f"{prefix}_{name}" for name in st.SUBTYPES]
        labels = [int(v) for _, v in group]
        assert set(labels) <= {0, 1}
        assert labels[-1] == max(labels[:-1])  # any = 1 iff some subtype is 1
    assert sorted(ident.rsplit("_", 1)[0] for ident, _ in rows[::6]) == files


def test_generated_file_stem_is_the_rsna_sop_instance_uid(small_run: Path) -> None:
    path = next((small_run / "stage_2_train").glob("*.dcm"))
    ds = pydicom.dcmread(path)
    assert RSNA_SOP_ID.match(path.stem)
    assert ds.SOPInstanceUID == path.stem == ds.file_meta.MediaStorageSOPInstanceUID
    for value in (ds.PatientID, ds.StudyInstanceUID, ds.SeriesInstanceUID):
        assert RSNA_ID.match(str(value))
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert ds.SOPClassUID == CTImageStorage and ds.Modality == "CT"
    assert list(ds.ImageType) == ["ORIGINAL", "PRIMARY", "AXIAL"]
    assert ds.BodyPartExamined == "HEAD" and ds.Rows == ds.Columns == 96
    assert path.read_bytes()[128:132] == b"DICM"


def test_generate_is_byte_identical_for_the_same_seed(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    generate(a, studies=2, seed=11, size=64, progress=False)
    generate(b, studies=2, seed=11, size=64, progress=False)
    assert (a / "stage_2_train.csv").read_bytes() == (b / "stage_2_train.csv").read_bytes()
    names = sorted(p.name for p in (a / "stage_2_train").iterdir())
    assert names == sorted(p.name for p in (b / "stage_2_train").iterdir())
    for name in names:
        assert (a / "stage_2_train" / name).read_bytes() == (
            b / "stage_2_train" / name
        ).read_bytes()


def test_different_seeds_give_different_studies() -> None:
    one = synth_study(1, n_slices=2, size=64)
    two = synth_study(2, n_slices=2, size=64)
    assert not np.array_equal(one[0].hu, two[0].hu)


@pytest.mark.parametrize("storage", STORAGES)
def test_to_hu_reproduces_the_generated_hu_for_each_storage(storage: str) -> None:
    for s in synth_study(5, n_slices=3, size=128, storage=storage, subtypes=[st.SUBDURAL]):
        ds = _round_trip(s.dataset)
        assert needs_rsna_12bit_fix(ds) == (storage == synth.RSNA12)
        np.testing.assert_array_equal(to_hu(ds), s.hu)


def test_slices_are_ordered_by_z_with_constant_spacing() -> None:
    slices = synth_study(3, n_slices=6, size=64)
    z = [float(s.dataset.ImagePositionPatient[2]) for s in slices]
    assert [int(s.dataset.InstanceNumber) for s in slices] == list(range(1, 7))
    assert np.allclose(np.diff(z), float(slices[0].dataset.SliceThickness))
    ds = slices[0].dataset
    assert [float(v) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
    assert len({s.dataset.SeriesInstanceUID for s in slices}) == 1
    assert len({s.dataset.SOPInstanceUID for s in slices}) == 6


def test_anatomy_has_air_skull_and_brain_densities() -> None:
    s = synth_study(4, n_slices=1, size=256)[0]
    hu, tissue = s.hu, s.tissue
    assert np.median(hu[tissue == Tissue.AIR]) < -950
    skull = hu[tissue == Tissue.BONE]
    assert np.percentile(skull, 90) > 1100 and np.median(skull) > 700
    assert 20 <= hu[tissue == Tissue.BRAIN].mean() <= 45
    assert np.median(hu[tissue == Tissue.VENTRICLE]) < 18


def test_normal_study_has_no_positive_label() -> None:
    slices = synth_study(8, n_slices=8, size=64)
    assert all(v == 0 for s in slices for v in s.labels.values())
    assert all(not s.bleed.any() for s in slices)


def _near(mask: np.ndarray, other: np.ndarray, pixels: int) -> bool:
    return bool((ndimage.binary_dilation(mask, iterations=pixels) & other).any())


@pytest.mark.parametrize("subtype", st.HEMORRHAGE_SUBTYPES)
def test_forced_subtype_shows_where_it_belongs_at_blood_density(subtype: str) -> None:
    code = st.index(subtype) + 1
    slices = synth_study(21, n_slices=8, size=256, subtypes=[subtype])
    positive = [s for s in slices if s.labels[subtype]]
    assert positive
    for s in slices:  # labels are read off the pixels
        counts = np.bincount(s.bleed.ravel(), minlength=6)
        assert s.labels[subtype] == int(counts[code] >= min_bleed_pixels(256))
        assert s.labels[st.ANY] == max(s.labels[n] for n in st.HEMORRHAGE_SUBTYPES)
    interior = []  # blood pixels clear of the skull's blur
    for s in positive:
        blood = s.bleed == code
        bone = s.tissue == Tissue.BONE
        interior.append(s.hu[blood & ~ndimage.binary_dilation(bone, iterations=2)])
        if subtype in (st.EPIDURAL, st.SUBDURAL):
            # Against the inner table, or (interhemispheric, tentorial subdural) the dura.
            assert _near(blood, bone | (s.tissue == Tissue.FALX), 2)
        elif subtype == st.INTRAVENTRICULAR:
            assert (s.tissue[blood] == Tissue.VENTRICLE).all()
        elif subtype == st.INTRAPARENCHYMAL:
            assert not _near(blood, bone, 8)  # deep in the parenchyma
            assert (s.tissue[blood] != Tissue.VENTRICLE).all()
        else:
            assert np.isin(s.tissue[blood], [Tissue.BRAIN, Tissue.CSF, Tissue.FALX]).all()
    # Clot is 50-90 HU; a hyperacute swirl is mostly lower (35-50 HU) with clotted islands.
    blood_hu = np.concatenate(interior)
    assert 35 <= np.median(blood_hu) <= 90 and np.percentile(blood_hu, 90) >= 50


def test_subarachnoid_blood_is_at_least_three_pixels_thick_at_512() -> None:
    slices = synth_study(2, n_slices=4, size=512, subtypes=[st.SUBARACHNOID])
    code = st.index(st.SUBARACHNOID) + 1
    blood = np.stack([s.bleed == code for s in slices])
    # Eroding by one pixel in-plane keeps most of it: the lines are 3+ pixels wide.
    kept = ndimage.binary_erosion(blood, structure=np.ones((1, 3, 3), bool)).sum()
    assert kept > 0.25 * blood.sum() > 0


def test_several_subtypes_can_share_a_study() -> None:
    wanted = [st.SUBDURAL, st.INTRAPARENCHYMAL]
    slices = synth_study(9, n_slices=10, size=128, subtypes=wanted)
    for name in wanted:
        assert any(s.labels[name] for s in slices)


def test_valid_uids_are_valid_and_distinct_from_the_rsna_image_id() -> None:
    s = synth_study(6, n_slices=2, size=64, valid_uids=True)[0]
    ds = s.dataset
    for uid in (ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID):
        assert UID(str(uid)).is_valid and str(uid).startswith("2.25.")
    assert RSNA_SOP_ID.match(s.image_id) and s.image_id != ds.SOPInstanceUID


def test_generate_with_valid_uids_keeps_rsna_file_names(tmp_path: Path) -> None:
    generate(tmp_path, studies=1, seed=2, size=64, valid_uids=True, progress=False)
    path = next((tmp_path / "stage_2_train").glob("*.dcm"))
    ds = pydicom.dcmread(path)
    assert RSNA_SOP_ID.match(path.stem)
    assert UID(ds.SOPInstanceUID).is_valid and ds.SOPInstanceUID != path.stem


def test_about_half_of_generated_studies_bleed() -> None:
    rng = np.random.default_rng(0)
    draws = [synth._draw_subtypes(rng) for _ in range(4000)]
    assert 0.4 <= np.mean([bool(d) for d in draws]) <= 0.5
    assert {name for d in draws for name in d} == set(st.HEMORRHAGE_SUBTYPES)


def test_synth_study_rejects_an_unknown_subtype() -> None:
    with pytest.raises(ValueError, match="hemorrhage subtypes"):
        synth_study(0, n_slices=1, size=64, subtypes=["fracture"])


def test_summary_is_one_line_naming_the_counts(tmp_path: Path) -> None:
    summary = generate(tmp_path, studies=1, seed=4, size=64, progress=False)
    text = str(summary)
    assert "\n" not in text and text.startswith("wrote 1 study, ")
    assert summary.slices == len(list((tmp_path / "stage_2_train").glob("*.dcm")))


def test_cli_synth_writes_the_rsna_layout(tmp_path: Path) -> None:
    out = tmp_path / "cli"
    args = ["synth", "--out", str(out), "--studies", "1", "--seed", "3", "--size", "64"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "wrote 1 study, " in result.output
    rows = _read_csv(out / "stage_2_train.csv")
    assert len(rows) == 6 * len(list((out / "stage_2_train").glob("*.dcm"))) > 0


# --------------------------------------------------------------- whole head, mimics, presets


def _full_series(seed: int, preset: str = "train", subtypes=(), size: int = 96):
    """A full-length series (30 slices: foramen magnum to vertex) at a small size."""
    return synth_study(seed, n_slices=30, size=size, subtypes=subtypes, preset=preset)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_generate_is_byte_identical_per_preset(tmp_path: Path, preset: str) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    for out in (a, b):
        generate(out, studies=1, seed=3, size=64, progress=False, preset=preset)
    for name in ("stage_2_train.csv", "phantom_slices.csv"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    for folder in ("stage_2_train", synth.MASK_DIR):
        for path in sorted((a / folder).iterdir()):
            assert path.read_bytes() == (b / folder / path.name).read_bytes()


def test_presets_give_different_images_for_the_same_seed() -> None:
    train = synth_study(5, n_slices=2, size=64)
    heldout = synth_study(5, n_slices=2, size=64, preset="heldout")
    assert not np.array_equal(train[0].hu, heldout[0].hu)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_lowest_slices_show_the_skull_base_with_air_cells_and_dense_bone(preset: str) -> None:
    slices = _full_series(12, preset)
    low = slices[:4]
    sinus = sum(int((s.tissue == Tissue.SINUS).sum()) for s in low)
    assert sinus > 20  # paranasal sinuses, nasal cavity, mastoid cells: air inside the head
    for s in low:
        assert (
            s.hu[s.tissue == Tissue.SINUS].size == 0
            or np.median(s.hu[s.tissue == Tissue.SINUS]) < -500
        )
    assert max(int(np.percentile(s.hu[s.tissue == Tissue.BONE], 95)) for s in low) > 1100
    assert any(
        (s.tissue == Tissue.GLOBE).any() or (s.tissue == Tissue.FAT).any() for s in slices[:10]
    )
    top = slices[-1]
    brain_top = int((top.tissue == Tissue.BRAIN).sum())
    brain_mid = int((slices[len(slices) // 2].tissue == Tissue.BRAIN).sum())
    assert brain_top < 0.3 * brain_mid  # the vertex: little brain, mostly vault


def test_series_position_runs_from_zero_to_one() -> None:
    slices = _full_series(2)
    positions = [s.series_position for s in slices]
    assert positions[0] == 0.0 and positions[-1] == 1.0
    assert positions == sorted(positions)


def test_normal_studies_have_no_labels_but_carry_mimics() -> None:
    mimics = 0
    for seed in range(6):
        slices = _full_series(seed)
        assert all(v == 0 for s in slices for v in s.labels.values())
        assert all(not s.bleed.any() for s in slices)
        if any((s.tissue == Tissue.CALCIFICATION).any() for s in slices):
            calc = np.concatenate([s.hu[s.tissue == Tissue.CALCIFICATION] for s in slices])
            assert np.percentile(calc, 90) > 80  # dense like blood or denser
            mimics += 1
    assert mimics >= 2


def test_heldout_ranges_differ_from_train_and_its_draws_fall_in_them() -> None:
    train, held = range_fields(TRAIN_PRESET), range_fields(HELDOUT_PRESET)
    assert train.keys() == held.keys()
    differ = [name for name in train if train[name] != held[name]]
    for name in ("head_scale", "noise_sd", "grey_white_gap", "blood_hu"):
        assert name in differ
    assert held["head_scale"][0] < train["head_scale"][0]
    from phantoms.anatomy import sample_head

    rng = np.random.default_rng(0)
    for _ in range(20):
        head = sample_head(rng, HELDOUT_PRESET)
        assert HELDOUT_PRESET.head_scale[0] <= head.scale <= HELDOUT_PRESET.head_scale[1]
        assert HELDOUT_PRESET.noise_sd[0] <= head.noise_sd <= HELDOUT_PRESET.noise_sd[1]


def test_subtle_bleeds_are_a_large_share() -> None:
    for preset in PRESETS.values():
        assert preset.subtle_fraction >= 0.4


def test_pixel_spacing_follows_the_field_of_view() -> None:
    spacings = {
        float(synth_study(s, n_slices=1, size=128)[0].dataset.PixelSpacing[0]) for s in range(6)
    }
    lo, hi = TRAIN_PRESET.fov_mm
    assert len(spacings) > 1 and all(lo / 128 - 1e-6 <= v <= hi / 128 + 1e-6 for v in spacings)


def test_phantom_slices_csv_matches_the_labels(small_run: Path) -> None:
    with (small_run / "phantom_slices.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert tuple(rows[0].keys()) == SLICES_COLUMNS
    labels = {ident: int(v) for ident, v in _read_csv(small_run / "stage_2_train.csv")}
    assert len(rows) * 6 == len(labels)
    for row in rows:
        counts = {n: int(row[f"{n}_pixels"]) for n in st.HEMORRHAGE_SUBTYPES}
        assert int(row["bleed_pixels"]) == sum(counts.values())
        for name, count in counts.items():
            assert (count > 0) == bool(labels[f"{row['image_id']}_{name}"])
        assert 0.0 <= float(row["series_position"]) <= 1.0 and row["preset"] == "train"
    assert len({row["study"] for row in rows}) == 3


def test_cli_synth_heldout_preset(tmp_path: Path) -> None:
    out = tmp_path / "held"
    args = ["synth", "--out", str(out), "--studies", "1", "--seed", "3", "--size", "64"]
    result = CliRunner().invoke(app, [*args, "--preset", "heldout"])
    assert result.exit_code == 0, result.output
    assert "wrote 1 study, " in result.output
    text = (out / "phantom_slices.csv").read_text()
    assert text.splitlines()[1].split(",")[SLICES_COLUMNS.index("preset")] == "heldout"


def test_cli_synth_unknown_preset_is_a_one_line_error(tmp_path: Path) -> None:
    args = ["synth", "--out", str(tmp_path / "x"), "--studies", "1", "--preset", "nope"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code != 0
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "nope" in lines[0] and "train" in lines[0] and "heldout" in lines[0]
    assert not (tmp_path / "x").exists()


def test_cli_synth_prints_its_summary_once_with_plurals(tmp_path: Path) -> None:
    import subprocess

    done = subprocess.run(
        ["ichnode", "synth", "--out", str(tmp_path / "o"), "--studies", "2", "--size", "64"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    both = done.stdout + done.stderr
    assert both.count("wrote 2 studies, ") == 1, both


def test_generate_writes_each_slices_bleed_map_that_its_labels_are_read_off(
    tmp_path: Path,
) -> None:
    generate(tmp_path, studies=3, seed=1, size=64, progress=False)  # seed 1: bleeding studies
    rows = {r["image_id"]: r for r in csv.DictReader((tmp_path / SLICES_CSV).open())}
    labels = _read_csv(tmp_path / "stage_2_train.csv")
    label = {ident: int(v) for ident, v in labels}
    shown = 0
    for path in sorted((tmp_path / "stage_2_train").glob("*.dcm")):
        bleed = read_mask(tmp_path / synth.MASK_DIR / f"{path.stem}.png")
        assert bleed.shape == (64, 64) and bleed.dtype == np.uint8
        counts = np.bincount(bleed.ravel(), minlength=len(st.SUBTYPES))
        for name in st.HEMORRHAGE_SUBTYPES:
            n = int(counts[st.index(name) + 1])
            assert n == int(rows[path.stem][f"{name}_pixels"])
            assert label[f"{path.stem}_{name}"] == int(n > 0)
        shown += int(bleed.any())
    assert shown > 0


@pytest.mark.parametrize("preset", [TRAIN_PRESET, HELDOUT_PRESET])
def test_the_level_top_of_the_tentorium_is_averaged_over_a_thick_slice(preset) -> None:
    # A plane through the tent's nearly level top cuts it over centimetres; one thin plane
    # shows that at dural density, a 7 mm slice only as a faint haze (not a blood-dense disc).
    from dataclasses import replace

    from phantoms.anatomy import TENT_APEX, Phantom, sample_head

    head = sample_head(np.random.default_rng(3), preset)
    head = replace(head, tilt=0.0, roll=0.0, yaw=0.0, shift=(0.0, 0.0))
    phantom = Phantom(head, 256, 230.0 / 256)
    z = TENT_APEX * head.scale  # no tilt: the plane's canonical height is z / scale
    g = phantom.geometry(z)
    tent = (g.tissue == Tissue.FALX) & (np.abs(g.x) > 3.0)  # the tentorium, not the falx
    assert tent.sum() > 50  # the level top: a disc of pixels within the sheet
    for thickness, at_least, at_most in ((0.5, 0.99, 1.0), (7.0, 0.0, 0.5)):
        hu = phantom.hu(g, z)
        phantom.tentorium_partial_volume(g, z, hu, thickness)
        share = (hu[tent] - head.grey_hu) / (head.dura_hu - head.grey_hu)
        assert at_least <= np.median(share) <= at_most, (thickness, np.median(share))


@pytest.mark.parametrize("subtype", ["intraparenchymal", "subdural"])
def test_the_ideal_observers_dprime_is_the_signal_before_the_kernel_over_its_noise(
    subtype: str,
) -> None:
    # Rendered twice with the same noise, with and without the bleed: the difference of the
    # two images is the bleed's signal after the kernel (a Gaussian blur, which can only
    # shrink it). The ideal d' is that signal before the kernel over the noise's SD before
    # it: never below the blurred difference's norm over that SD, and for a large blob
    # (little changed by a blur) close to it; a thin subdural loses more to the blur.
    from dataclasses import replace

    from phantoms.anatomy import Phantom, sample_head
    from phantoms.bleeds import sample_bleed
    from phantoms.scanner import Scanner

    rng = np.random.default_rng(7)
    head = replace(sample_head(rng, HELDOUT_PRESET), motion=0.0, sharpen=0.0)
    scanner = Scanner(Phantom(head, 256, 230.0 / 256), thickness=5.0)
    for _ in range(50):
        bleed = sample_bleed(subtype, head, (-20.0, 60.0), rng, HELDOUT_PRESET)
        z = (bleed.z_lo + bleed.z_hi) / 2.0
        with_bleed = scanner.render(z, [bleed], np.random.default_rng(1))
        if with_bleed.bleed.sum() > 20:
            break
    plain = scanner.render(z, [], np.random.default_rng(1))
    assert plain.ideal_dprime == 0.0 and with_bleed.ideal_dprime > 0.0
    blurred = np.linalg.norm(with_bleed.hu.astype(float) - plain.hu) / scanner.sd_before_blur
    assert blurred <= with_bleed.ideal_dprime * 1.02
    if subtype == "intraparenchymal":
        assert with_bleed.ideal_dprime <= blurred * 1.3
    # Twice the noise, the same bleed: half the d'.
    noisy = Scanner(Phantom(replace(head, noise_sd=2 * head.noise_sd), 256, 230.0 / 256), 5.0)
    again = noisy.render(z, [bleed], np.random.default_rng(1))
    assert again.ideal_dprime == pytest.approx(with_bleed.ideal_dprime / 2, rel=1e-4)


def test_phantom_slices_csv_carries_the_ideal_dprime_of_bleeding_slices_only(
    small_run: Path,
) -> None:
    table = pd.read_csv(small_run / SLICES_CSV)
    bleeding = table["bleed_pixels"] > 0
    assert (table.loc[~bleeding, "ideal_dprime"] == 0).all()
    assert (table.loc[bleeding, "ideal_dprime"] > 0).all()


def test_study_heads_replays_the_draws_each_written_study_was_rendered_with(
    tmp_path: Path,
) -> None:
    # The slice thickness written in each study follows from its head (size, span) and its
    # slice count: replayed heads must give every study's own.
    from phantoms.presets import get_preset
    from phantoms.synth import _series_heights, study_heads

    generate(tmp_path, studies=5, size=64, seed=9, progress=False, preset="heldout")
    heads = study_heads(5, seed=9, size=64, preset="heldout")
    table = pd.read_csv(tmp_path / SLICES_CSV, dtype={"study": str})
    assert set(heads) == set(table["study"])
    for study, rows in table.groupby("study"):
        ds = pydicom.dcmread(tmp_path / "stage_2_train" / f"{rows['image_id'].iloc[0]}.dcm")
        _, spacing = _series_heights(heads[study], len(rows), get_preset("heldout"))
        assert float(ds.SliceThickness) == pytest.approx(spacing)
    assert len({h.noise_sd for h in heads.values()}) == 5  # five draws, not one
