"""RSNA layout reading: label pivot and dedup, unreadable images, header index cache, split,
preprocessed-array cache."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from ichnode.imaging import PreprocessSpec, preprocess, read
from ichnode.subtypes import SUBTYPES
from phantoms.synth import generate
from training.cache import PreprocessCache
from training.dataset import (
    DatasetError,
    RSNADataset,
    find_layout,
    header_index,
    index_cache_path,
    load_labels,
    read_split,
    split_by_patient,
    write_split,
)

SPEC = PreprocessSpec(size=64)


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("phantoms")
    generate(out, studies=4, seed=5, size=64, progress=False)
    return out


def _copy_layout(src: Path, dst: Path, n: int) -> list[str]:
    """A smaller copy of ``src`` with its first ``n`` images."""
    table = load_labels(src / "stage_2_train.csv")
    ids = list(table.index[:n])
    (dst / "stage_2_train").mkdir(parents=True)
    rows = ["ID,Label"]
    for i in ids:
        (dst / "stage_2_train" / f"{i}.dcm").write_bytes(
            (src / "stage_2_train" / f"{i}.dcm").read_bytes()
        )
        rows += [f"{i}_{name},{table.loc[i, name]}" for name in SUBTYPES]
    (dst / "stage_2_train.csv").write_text("\n".join(rows) + "\n")
    return ids


def test_labels_pivot_to_the_six_subtype_columns_and_drop_duplicate_rows(tmp_path: Path):
    csv = tmp_path / "stage_2_train.csv"
    # Shuffled subtype order, one image repeated (the real download has duplicates).
    csv.write_text(
        "ID,Label\n"
        "ID_b_any,0\nID_b_subdural,0\nID_b_epidural,0\nID_b_intraparenchymal,0\n"
        "ID_b_intraventricular,0\nID_b_subarachnoid,0\n"
        "ID_a_subdural,1\nID_a_any,1\nID_a_epidural,0\nID_a_intraparenchymal,0\n"
        "ID_a_intraventricular,0\nID_a_subarachnoid,1\n"
        "ID_a_subdural,1\nID_a_any,1\n"
    )
    table = load_labels(csv)
    assert list(table.columns) == list(SUBTYPES)
    assert list(table.index) == ["ID_a", "ID_b"]
    assert table.loc["ID_a"].tolist() == [0, 0, 0, 1, 1, 1]
    assert table.loc["ID_b"].tolist() == [0, 0, 0, 0, 0, 0]


def test_labels_refuse_ids_that_are_not_file_name_safe(tmp_path: Path):
    csv = tmp_path / "stage_2_train.csv"
    csv.write_text("ID,Label\n" + "".join(f"ID_../x_{s},0\n" for s in SUBTYPES))
    with pytest.raises(DatasetError, match="file-name safe"):
        load_labels(csv)


def test_missing_layout_is_a_one_line_dataset_error(tmp_path: Path):
    with pytest.raises(DatasetError, match="stage_2_train.csv"):
        find_layout(tmp_path)


def test_an_image_with_unreadable_pixels_is_skipped_with_one_warning(
    phantoms: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    data = tmp_path / "data"
    ids = _copy_layout(phantoms, data, 3)
    broken = data / "stage_2_train" / f"{ids[1]}.dcm"
    broken.write_bytes(broken.read_bytes()[:-2000])  # header intact, pixel data truncated
    layout = find_layout(data)
    table = load_labels(layout.csv)
    cache = PreprocessCache(tmp_path / "cache", SPEC)
    ds = RSNADataset.from_table(layout, table, ids, SPEC, cache)
    with caplog.at_level(logging.WARNING, logger="training.dataset"):
        items = [ds[i] for i in range(3)] + [ds[1]]  # the broken one twice
    assert [it[3] for it in items] == [True, False, True, False]
    warnings = [r for r in caplog.records if "skipping unreadable image" in r.message]
    assert len(warnings) == 1 and ids[1] in warnings[0].getMessage()


def test_header_index_is_built_once_and_reused_from_its_cache(phantoms: Path, tmp_path: Path):
    data = tmp_path / "data"
    ids = _copy_layout(phantoms, data, 5)
    layout = find_layout(data)
    first = header_index(layout, ids, tmp_path / "cache", progress=False)
    assert index_cache_path(layout, tmp_path / "cache").is_file()
    assert first["readable"].all() and first["z"].notna().all()
    for f in layout.images.iterdir():  # a second build must not read a single header
        f.unlink()
    second = header_index(layout, ids, tmp_path / "cache", progress=False)
    pd.testing.assert_frame_equal(first, second)


def test_header_index_marks_a_missing_file_unreadable(phantoms: Path, tmp_path: Path):
    data = tmp_path / "data"
    ids = _copy_layout(phantoms, data, 2)
    (data / "stage_2_train" / f"{ids[0]}.dcm").unlink()
    index = header_index(find_layout(data), ids, tmp_path / "cache", progress=False)
    assert index.set_index("id")["readable"].to_dict() == {ids[0]: False, ids[1]: True}


def _index(n_patients: int = 50, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        for k in range(int(rng.integers(5, 40))):
            rows.append((f"ID_{p:03d}{k:03d}", f"PAT{p}", f"1.2.{p}", float(k), True))
    return pd.DataFrame(rows, columns=["id", "patient", "study", "z", "readable"])


def test_split_keeps_every_patient_in_one_split_with_80_10_10_patient_ratios():
    index = _index()
    split = split_by_patient(index, seed=7)
    patient_of = index.set_index("id")["patient"]
    patients = {name: set(patient_of.loc[ids]) for name, ids in split.items()}
    assert not patients["train"] & patients["val"]
    assert not patients["train"] & patients["test"]
    assert not patients["val"] & patients["test"]
    assert [len(patients[n]) for n in ("train", "val", "test")] == [40, 5, 5]
    assert sorted(sum(split.values(), [])) == sorted(index["id"])


def test_split_is_deterministic_for_a_seed_and_changes_with_it():
    index = _index()
    assert split_by_patient(index, seed=7) == split_by_patient(index, seed=7)
    assert split_by_patient(index, seed=7) != split_by_patient(index, seed=8)


def test_split_json_holds_seed_slice_ids_and_hashed_patients(tmp_path: Path):
    index = _index(10)
    split = split_by_patient(index, seed=3)
    write_split(tmp_path / "split.json", split, index, seed=3)
    doc = read_split(tmp_path / "split.json")
    assert doc["seed"] == 3 and doc["ids"] == split
    assert "PAT" not in json.dumps(doc["patients"])  # patient ids are hashed
    assert len(doc["patients"]["train"]) == 8


def test_second_read_comes_from_the_preprocessed_cache(phantoms: Path, tmp_path: Path):
    data = tmp_path / "data"
    ids = _copy_layout(phantoms, data, 1)
    layout = find_layout(data)
    expected = preprocess(read(layout.image_path(ids[0])), SPEC)
    ds = RSNADataset.from_table(
        layout, load_labels(layout.csv), ids, SPEC, PreprocessCache(tmp_path / "c", SPEC)
    )
    ds[0]
    layout.image_path(ids[0]).unlink()
    x, _, _, ok, _ = ds[0]
    assert ok
    np.testing.assert_allclose(x.numpy(), expected, atol=1e-3)  # float16 storage


def test_a_phantom_folder_serves_each_slices_bleed_map_cut_like_its_hu_plane(tmp_path: Path):
    from ichnode.imaging import hu_and_label_planes, pixel_spacing, preprocess_hu, to_hu
    from phantoms.synth import read_mask

    data = tmp_path / "data"
    generate(data, studies=3, seed=1, size=96, progress=False)  # seed 1: bleeding studies
    layout = find_layout(data)
    assert layout.masks == data / "phantom_masks"
    table = load_labels(layout.csv)
    spec = PreprocessSpec(size=64, pixel_mm=3.0)
    cache = PreprocessCache(tmp_path / "cache", spec)
    ds = RSNADataset.from_table(layout, table, list(table.index), spec, cache, masks=True)
    positive = [i for i, image_id in enumerate(ds.ids) if table.loc[image_id, "any"]]
    assert positive
    for i in range(len(ds)):
        x, y, _, ok, mask = ds[i]
        assert ok and mask.shape == (64, 64) and mask.dtype == torch.uint8
        dicom = read(layout.image_path(ds.ids[i]))
        np.testing.assert_allclose(x[0].numpy(), preprocess_hu(dicom, spec), atol=0.5)
        if not y[-1]:
            assert not mask.any()  # a normal slice has an empty map
        hu = to_hu(dicom)
        bleed = read_mask(layout.mask_path(ds.ids[i]))
        assert bleed.shape == hu.shape
        expected = hu_and_label_planes(hu, bleed, pixel_spacing(dicom), spec)[1]
        assert torch.equal(mask, torch.from_numpy(expected))
        # Every subtype the map shows is one the slice is labelled with.
        shown = {SUBTYPES[c - 1] for c in np.unique(bleed) if c}
        assert shown == {s for s in SUBTYPES[:-1] if table.loc[ds.ids[i], s]}
    # The maps are cached beside the arrays, and served from the cache.
    i = positive[0]
    layout.mask_path(ds.ids[i]).unlink()
    assert torch.equal(ds[i][4], torch.from_numpy(cache.load_mask(ds.ids[i])))


def test_a_folder_without_bleed_maps_serves_no_maps(phantoms: Path, tmp_path: Path):
    data = tmp_path / "data"
    ids = _copy_layout(phantoms, data, 2)  # the RSNA layout only, as the real download
    layout = find_layout(data)
    assert layout.masks is None
    spec = PreprocessSpec(size=64, pixel_mm=3.0)
    ds = RSNADataset.from_table(layout, load_labels(layout.csv), ids, spec, masks=True)
    assert ds[0][3] and ds[0][4].numel() == 0
