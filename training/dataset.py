"""The RSNA 2019 training layout: labels CSV, DICOM folder, header index, patient-level split.

The Kaggle download works unchanged: ``DATA/stage_2_train.csv`` (``ID,Label`` rows with IDs
``ID_<hex>_<subtype>``) next to ``DATA/stage_2_train/ID_<hex>.dcm``. Slices are preprocessed
by :func:`ichnode.imaging.preprocess` with the run's spec -- the same function the node serves
with. Unreadable images are skipped (one warning each), never fatal. Phantom folders
(``ichnode synth``) also hold ``DATA/phantom_masks/ID_<hex>.png``, each slice's bleed map: where
it exists, the dataset serves it beside the slice (cut to the same view) for per-pixel
supervision.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import torch
from torch.utils.data import Dataset

from ichnode.errors import IchnodeError
from ichnode.imaging import (
    PreprocessSpec,
    context_planes,
    context_positions,
    hu_and_label_planes,
    pixel_spacing,
    preprocess,
    preprocess_hu,
    quiet_pydicom,
    read,
    to_hu,
)
from ichnode.node.selection import geometry
from ichnode.subtypes import SUBTYPES
from training.cache import PreprocessCache

log = logging.getLogger(__name__)

CSV_NAME = "stage_2_train.csv"
IMAGE_DIR_NAME = "stage_2_train"
#: Per-slice bleed maps of phantom folders (:data:`phantoms.synth.MASK_DIR`).
MASK_DIR_NAME = "phantom_masks"
SPLIT_NAMES: tuple[str, ...] = ("train", "val", "test")
SPLIT_RATIOS: tuple[float, ...] = (0.8, 0.1, 0.1)

#: Image ids become file names: only these characters are accepted.
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_HEADER_TAGS = ["PatientID", "StudyInstanceUID", "ImagePositionPatient", "ImageOrientationPatient"]
INDEX_COLUMNS = ["id", "patient", "study", "z", "readable"]


class DatasetError(IchnodeError):
    """The data folder is missing, malformed or holds no usable slices."""


@dataclass(frozen=True)
class Layout:
    """Where the labels and images of an RSNA-layout folder are."""

    root: Path
    csv: Path
    images: Path
    masks: Path | None = None  # phantom bleed maps, where the folder has them

    def image_path(self, image_id: str) -> Path:
        return self.images / f"{image_id}.dcm"

    def mask_path(self, image_id: str) -> Path | None:
        return None if self.masks is None else self.masks / f"{image_id}.png"


def find_layout(data: Path) -> Layout:
    """Check ``data`` holds ``stage_2_train.csv`` and ``stage_2_train/``."""
    data = Path(data)
    if not data.is_dir():
        raise DatasetError(f"data folder {data} does not exist")
    csv, images = data / CSV_NAME, data / IMAGE_DIR_NAME
    if not csv.is_file():
        raise DatasetError(f"{data} has no {CSV_NAME} (expected the RSNA training layout)")
    if not images.is_dir():
        raise DatasetError(f"{data} has no {IMAGE_DIR_NAME}/ folder of DICOM files")
    masks = data / MASK_DIR_NAME
    return Layout(root=data, csv=csv, images=images, masks=masks if masks.is_dir() else None)


def load_labels(csv: Path) -> pd.DataFrame:
    """The CSV pivoted to one row per image id and the six SUBTYPES columns (int8).

    Duplicate rows (the real download has some) are dropped, keeping the first; images lacking
    one of the six labels are dropped with a warning.
    """
    try:
        raw = pd.read_csv(csv, dtype={"ID": str, "Label": "float64"})
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        raise DatasetError(f"{csv.name}: cannot read labels ({exc})") from None
    if list(raw.columns[:2]) != ["ID", "Label"]:
        raise DatasetError(f"{csv.name}: expected columns ID,Label, found {list(raw.columns)}")
    parts = raw["ID"].str.rsplit("_", n=1, expand=True)
    if parts.shape[1] != 2:
        raise DatasetError(f"{csv.name}: IDs must look like ID_<hex>_<subtype>")
    raw = raw.assign(image=parts[0], subtype=parts[1])
    raw = raw[raw["subtype"].isin(SUBTYPES)]
    n_before = len(raw)
    raw = raw.drop_duplicates(subset=["image", "subtype"], keep="first")
    if n_before != len(raw):
        log.info("labels: dropped %d duplicate rows", n_before - len(raw))
    table = raw.pivot(index="image", columns="subtype", values="Label").reindex(columns=SUBTYPES)
    incomplete = table.isna().any(axis=1)
    if incomplete.any():
        log.warning("labels: %d images lack one of the six labels; dropped", int(incomplete.sum()))
        table = table[~incomplete]
    bad = [i for i in table.index if not _ID_RE.match(i)]
    if bad:
        raise DatasetError(f"{csv.name}: {len(bad)} image ids are not file-name safe")
    table = table.astype(np.int8).sort_index()
    table.columns.name = None
    table.index.name = "id"
    return table


def _read_header(path: Path) -> tuple[str, str, float, bool]:
    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=True, specific_tags=_HEADER_TAGS)
    except Exception:  # noqa: BLE001 - missing or truncated files are skipped, not fatal
        return "", "", float("nan"), False
    patient = str(ds.get("PatientID", "") or "")
    study = str(ds.get("StudyInstanceUID", "") or "")
    try:  # the node's z (ImagePositionPatient along the slice normal), else IPP[2]
        z = geometry(ds).z
        if z is None:
            ipp = ds.get("ImagePositionPatient")
            z = float(ipp[2]) if ipp is not None and len(ipp) >= 3 else float("nan")
    except (TypeError, ValueError):
        z = float("nan")
    return patient or study, study, z, True


def index_cache_path(layout: Layout, cache_dir: Path) -> Path:
    """The header index file, keyed by the CSV's size and mtime."""
    st = layout.csv.stat()
    return Path(cache_dir) / f"header-index-{st.st_size}-{st.st_mtime_ns}.csv"


def bleed_dprime(layout: Layout, ids: list[str], cache_dir: Path) -> np.ndarray:
    """d' of each image's bleed (``phantoms.visibility``: contrast over the surrounding
    tissue's spread, times the square root of its pixels), NaN where it has no blood or none
    measurable. Phantom folders only (bleed maps and ``phantom_slices.csv``); measured once
    for the whole folder and cached beside the header index."""
    from phantoms.synth import SLICES_CSV
    from phantoms.visibility import folder_visibility

    if layout.masks is None or not (layout.root / SLICES_CSV).is_file():
        raise IchnodeError(
            f"{layout.root} has no bleed maps ({MASK_DIR_NAME}/ and {SLICES_CSV}): "
            "how visible a bleed is is known for phantom folders only"
        )
    st = layout.csv.stat()
    path = Path(cache_dir) / f"visibility-{st.st_size}-{st.st_mtime_ns}.csv"
    if path.exists():
        table = pd.read_csv(path, dtype={"image_id": str})
    else:
        log.info("measuring how visible each bleed is (%s)", layout.root.name)
        table = folder_visibility(layout.root)
        path.parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(path, index=False)
    dprime = table.set_index("image_id")["dprime"]
    return dprime.reindex(ids).to_numpy(dtype=np.float64)


def header_index(
    layout: Layout, ids: list[str], cache_dir: Path, threads: int = 8, progress: bool = True
) -> pd.DataFrame:
    """PatientID, StudyInstanceUID and z of each image (header only), cached on disk.

    The cache grows incrementally: ids already indexed are never read again.
    """
    from tqdm import tqdm

    path = index_cache_path(layout, cache_dir)
    known = (
        pd.read_csv(path, dtype={"id": str, "patient": str, "study": str}, keep_default_na=False)
        if path.exists()
        else pd.DataFrame(columns=INDEX_COLUMNS)
    )
    if len(known):
        known["z"] = pd.to_numeric(known["z"], errors="coerce")
        known["readable"] = known["readable"].astype(str).str.lower() == "true"
    missing = sorted(set(ids) - set(known["id"]))
    if missing:
        log.info("header index: reading %d headers (%d cached)", len(missing), len(known))
        with quiet_pydicom(), ThreadPoolExecutor(max_workers=threads) as pool:
            rows = list(
                tqdm(
                    pool.map(_read_header, (layout.image_path(i) for i in missing)),
                    total=len(missing),
                    desc="headers",
                    disable=None if progress else True,
                    leave=False,
                )
            )
        new = pd.DataFrame(
            [(i, *r) for i, r in zip(missing, rows, strict=True)], columns=INDEX_COLUMNS
        )
        known = pd.concat([known, new], ignore_index=True) if len(known) else new
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        known.to_csv(tmp, index=False)
        tmp.replace(path)
    return known.set_index("id").loc[ids].reset_index()


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def split_by_patient(
    index: pd.DataFrame, seed: int, ratios: tuple[float, ...] = SPLIT_RATIOS
) -> dict[str, list[str]]:
    """Slice ids per split (train/val/test), all slices of a patient in one split.

    Patients are shuffled with ``seed`` and cut by the ratios of their count (at least one
    patient per split when there are three or more).
    """
    patients = sorted(index["patient"].unique())
    random.Random(seed).shuffle(patients)
    n = len(patients)
    n_val = max(1, round(ratios[1] * n)) if n >= 3 else 0
    n_test = max(1, round(ratios[2] * n)) if n >= 3 else 0
    n_train = n - n_val - n_test
    groups = {
        "train": set(patients[:n_train]),
        "val": set(patients[n_train : n_train + n_val]),
        "test": set(patients[n_train + n_val :]),
    }
    return {
        name: sorted(index.loc[index["patient"].isin(members), "id"])
        for name, members in groups.items()
    }


def write_split(path: Path, split: dict[str, list[str]], index: pd.DataFrame, seed: int) -> None:
    """RUN/split.json: seed, ratios, slice ids and patient-id hashes (never raw ids) per split."""
    by_id = index.set_index("id")["patient"]
    doc = {
        "seed": seed,
        "ratios": dict(zip(SPLIT_NAMES, SPLIT_RATIOS, strict=True)),
        "ids": split,
        "patients": {
            name: sorted({_hash(p) for p in by_id.loc[ids]}) if ids else []
            for name, ids in split.items()
        },
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1))


def read_split(path: Path) -> dict:
    """A split.json written by :func:`write_split`."""
    try:
        doc = json.loads(Path(path).read_text())
        _ = [doc["ids"][name] for name in SPLIT_NAMES]
    except FileNotFoundError:
        raise DatasetError(f"split file {path} does not exist") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise DatasetError(f"{path}: not a split.json written by ichnode train ({exc!r})") from None
    return doc


class RSNADataset(Dataset):
    """Preprocessed slices and their six labels; ``(x, y, position, ok, mask)`` per item.

    ``x`` is the model input for a legacy spec, and the HU plane ``(1, S, S)`` of
    :func:`ichnode.imaging.preprocess_hu` for a spec with ``pixel_mm`` (the loop augments it
    in HU and windows it, :func:`training.loop.model_input`). ``ok`` is False for an image
    whose pixels cannot be read: the loop drops it from the batch and counts it. ``mask`` is
    the slice's bleed map over the same view (``(S, S)`` uint8, :func:`mask_of`) when
    ``masks`` is set and the folder has bleed maps (phantoms), else an empty tensor. With a
    cache, decoded arrays are stored for later epochs.
    """

    def __init__(
        self,
        layout: Layout,
        ids: list[str],
        labels: np.ndarray,
        spec: PreprocessSpec,
        cache: PreprocessCache | None = None,
        neighbours: dict[str, list[str | None]] | None = None,
        masks: bool = False,
    ) -> None:
        self.layout, self.ids, self.spec, self.cache = layout, list(ids), spec, cache
        self.labels = np.asarray(labels, dtype=np.float32)
        if spec.context and neighbours is None:
            raise ValueError("a spec with context slices needs each image's neighbours")
        self.neighbours = neighbours or {}
        self.masks = masks and layout.masks is not None and spec.pixel_mm is not None

    @classmethod
    def from_table(
        cls,
        layout: Layout,
        table: pd.DataFrame,
        ids: list[str],
        spec: PreprocessSpec,
        cache: PreprocessCache | None = None,
        index: pd.DataFrame | None = None,
        masks: bool = False,
    ) -> RSNADataset:
        """The images ``ids`` of ``table``; ``index`` (:func:`header_index`) gives their
        neighbours when ``spec`` has context slices; ``masks`` serves the bleed maps of a
        phantom folder."""
        neighbours = None
        if spec.context:
            if index is None:
                raise ValueError("a spec with context slices needs the header index")
            neighbours = context_ids(index, spec.context)
        labels = table.loc[ids, list(SUBTYPES)].to_numpy()
        return cls(layout, ids, labels, spec, cache, neighbours, masks)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def item_shape(self) -> tuple[int, int, int]:
        """Shape of one ``x``: the input, or the HU planes for a ``pixel_mm`` spec."""
        channels = self.spec.channels if self.spec.pixel_mm is None else self.spec.planes
        return (channels, self.spec.size, self.spec.size)

    def _decode(self, image_id: str, with_mask: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """The slice's array (and its bleed map over the same view) from the DICOM file."""
        with quiet_pydicom():
            ds = read(self.layout.image_path(image_id))
            if self.spec.pixel_mm is None:
                return preprocess(ds, self.spec), None
            if not with_mask:
                return preprocess_hu(ds, self.spec)[None], None
            hu = to_hu(ds)
        bleed = mask_of(self.layout, image_id, hu.shape)
        plane, mask = hu_and_label_planes(hu, bleed, pixel_spacing(ds), self.spec)
        return plane[None], mask

    def _load(self, image_id: str, with_mask: bool = False) -> tuple[np.ndarray | None, ...]:
        """``(array, mask)``: cached when possible; ``(None, None)`` when unreadable."""
        if self.cache is not None:
            if self.cache.is_bad(image_id):
                return None, None
            arr = self.cache.load(image_id)
            mask = self.cache.load_mask(image_id) if with_mask else None
            if arr is not None and (mask is not None or not with_mask):
                return arr, mask
        try:
            arr, mask = self._decode(image_id, with_mask)
        except IchnodeError as exc:
            log.warning("skipping unreadable image %s: %s", image_id, exc)
            if self.cache is not None:
                self.cache.mark_bad(image_id, str(exc))
            return None, None
        if self.cache is not None:
            self.cache.save(image_id, arr)
            if mask is not None:
                self.cache.save_mask(image_id, mask)
        return arr, mask

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int, bool, torch.Tensor]:
        image_id = self.ids[i]
        arr, mask = self._load(image_id, self.masks)
        ok = arr is not None
        if arr is None:
            arr = np.zeros(self.item_shape, np.float32)
        elif self.spec.context:
            side = self.neighbours.get(image_id) or [None] * (2 * self.spec.context)
            planes = [None if n is None else self._load(n)[0] for n in side]
            arr = context_planes(arr[0], [None if p is None else p[0] for p in planes], self.spec)
        if self.masks:
            size = self.spec.size
            mask_t = torch.from_numpy(mask if mask is not None else np.zeros((size, size), "u1"))
        else:
            mask_t = torch.zeros(0, dtype=torch.uint8)
        return torch.from_numpy(np.asarray(arr)), torch.from_numpy(self.labels[i]), i, ok, mask_t


def mask_of(layout: Layout, image_id: str, shape: tuple[int, ...]) -> np.ndarray:
    """The bleed map of a phantom slice (uint8, 0 or 1 + a SUBTYPES index); all zeros when
    the folder has none for it or it does not fit the image (a missing map is no bleed: the
    slice's labels still say what it holds)."""
    from PIL import Image, UnidentifiedImageError

    path = layout.mask_path(image_id)
    if path is not None:
        try:
            with Image.open(path) as img:
                bleed = np.asarray(img, dtype=np.uint8)
            if bleed.shape == tuple(shape):
                return bleed
            log.warning("bleed map of %s is %s, not %s: ignored", image_id, bleed.shape, shape)
        except FileNotFoundError:
            pass
        except (OSError, UnidentifiedImageError) as exc:
            log.warning("bleed map of %s cannot be read (%s): ignored", image_id, exc)
    return np.zeros(shape, dtype=np.uint8)


def context_ids(index: pd.DataFrame, context: int) -> dict[str, list[str | None]]:
    """Each image's ``context`` neighbours on each side by z within its study, lowest z
    first and its own place left out (as :func:`ichnode.imaging.context_planes` takes them);
    None where the study ends or z is unknown. The node takes them within the series (the
    RSNA download and the phantoms have one axial series per study)."""
    out: dict[str, list[str | None]] = {}
    known = index[np.isfinite(pd.to_numeric(index["z"], errors="coerce"))]
    for _, group in known.groupby("study", sort=False):
        ordered = group.sort_values(["z", "id"], kind="stable")["id"].tolist()
        for pos, image_id in enumerate(ordered):
            around = context_positions(pos, len(ordered), context)
            out[image_id] = [None if j is None else ordered[j] for j in around]
    return out
