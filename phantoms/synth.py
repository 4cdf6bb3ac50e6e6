"""Synthetic head-CT studies in the RSNA 2019 training layout.

``generate`` writes ``OUT/stage_2_train.csv`` (``ID,Label`` rows ``ID_<hex>_<subtype>``, six per
slice in :data:`ichnode.subtypes.SUBTYPES` order) and ``OUT/stage_2_train/ID_<hex>.dcm``, one
DICOM Part 10 file per slice, exactly like the RSNA Intracranial Hemorrhage Detection data.
``synth_study`` builds one study in memory for the node's tests. Both render the analytic
head of :mod:`phantoms.anatomy` (foramen magnum to vertex) with the bleeds of
:mod:`phantoms.bleeds` through :mod:`phantoms.scanner`; every value is drawn from the ranges of
a :mod:`phantoms.presets` preset (``train`` by default). Every label is read off the pixels
written, and the same seed and preset give byte-identical files. ``generate`` also writes
``OUT/phantom_slices.csv``: per slice its study, position in the series and bleed pixel counts,
for evaluation by slice level or bleed size.

Storage varies between studies like real scanners: unsigned with intercept -1024 (BitsStored
16 or 12), signed with intercept 0, and the RSNA 12-bit quirk that
:func:`ichnode.imaging.needs_rsna_12bit_fix` undoes.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom import config as dicom_config
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian
from tqdm import tqdm

from ichnode import subtypes as st
from ichnode.errors import IchnodeError
from phantoms.anatomy import Head, Phantom, sample_head, series_span
from phantoms.bleeds import sample_bleed
from phantoms.presets import TRAIN, Preset, draw, get_preset
from phantoms.scanner import RenderedSlice, Scanner

log = logging.getLogger(__name__)

CSV_NAME = "stage_2_train.csv"
SLICES_CSV = "phantom_slices.csv"
SLICES_COLUMNS = (
    "image_id", "study", "series_position", "bleed_pixels",
    *(f"{name}_pixels" for name in st.HEMORRHAGE_SUBTYPES), "preset", "ideal_dprime",
)  # fmt: skip
IMAGE_DIR = "stage_2_train"
#: Per-slice bleed maps (8-bit PNG, the values of :attr:`StudySlice.bleed`), beside the images.
MASK_DIR = "phantom_masks"
MIN_SIZE = 64

#: Storage variants: unsigned (intercept -1024, 16 or 12 bits stored), signed, RSNA quirk.
UNSIGNED, UNSIGNED12, SIGNED, RSNA12 = "unsigned", "unsigned12", "signed", "rsna12"
STORAGES: tuple[str, ...] = (UNSIGNED, UNSIGNED12, SIGNED, RSNA12)
STORAGE_WEIGHTS = (0.25, 0.2, 0.3, 0.25)

#: Share of studies whose stored window is written multi-valued (two equal values).
MULTI_WINDOW = 0.4

#: Share of generated studies with at least one bleed, and how many bleeds they get.
BLEEDING_FRACTION = 0.45
BLEED_COUNT_WEIGHTS = (0.6, 0.3, 0.1)
SUBTYPE_WEIGHTS = {
    st.EPIDURAL: 0.14,
    st.INTRAPARENCHYMAL: 0.22,
    st.INTRAVENTRICULAR: 0.16,
    st.SUBARACHNOID: 0.22,
    st.SUBDURAL: 0.26,
}
#: Redraws of a study's bleeds before giving up on showing every requested subtype.
MAX_BLEED_ATTEMPTS = 10

ID_PREFIX = "ID_"
SOP_HEX, PATIENT_HEX, STUDY_HEX = 9, 8, 10
UID_ROOT_UUID = "2.25."

_FIRST = ("ALEX", "ANNA", "BORIS", "CARLA", "DAVID", "EMMA", "FELIX", "GRETA", "HUGO", "IRIS")
_LAST = ("SYNTH", "PHANTOM", "MODEL", "SAMPLE", "TESTER", "DUMMY", "EXAMPLE", "NULLSON")


@dataclass(frozen=True)
class StudySlice:
    """One slice: the dataset to write or send, its labels, and the maps it was drawn from.

    ``hu`` is the integer HU image the pixels encode; ``tissue`` the anatomy
    (:class:`phantoms.anatomy.Tissue` codes); ``bleed`` 0 or 1 + the subtype's index in
    ``SUBTYPES``. ``image_id`` is the RSNA id (file stem and CSV prefix), which differs from
    SOPInstanceUID when valid UIDs were asked for. ``series_position`` is 0 for the lowest
    slice of the series and 1 for the highest; ``pixels`` the bleed pixels per subtype;
    ``ideal_dprime`` the ideal observer's detectability of its blood
    (:mod:`phantoms.scanner`; 0 without blood).
    """

    dataset: FileDataset
    labels: dict[str, int]
    image_id: str
    hu: np.ndarray
    tissue: np.ndarray
    bleed: np.ndarray
    series_position: float = 0.0
    pixels: dict[str, int] = field(default_factory=dict)
    ideal_dprime: float = 0.0


@dataclass
class SynthSummary:
    """What :func:`generate` wrote."""

    studies: int
    slices: int
    positives: dict[str, int]  # positive slices per subtype (``any`` included)
    bleeding_studies: int
    seconds: float
    out: Path
    storages: dict[str, int] = field(default_factory=dict)

    def __str__(self) -> str:
        parts = ", ".join(f"{n} {self.positives[n]}" for n in st.HEMORRHAGE_SUBTYPES)
        return (
            f"wrote {_count(self.studies, 'study', 'studies')}, "
            f"{_count(self.slices, 'slice', 'slices')} "
            f"({self.positives[st.ANY]} with hemorrhage: {parts}; "
            f"{_count(self.bleeding_studies, 'study', 'studies')} bleeding) to {self.out} "
            f"in {self.seconds:.1f} s"
        )


def _count(n: int, one: str, many: str) -> str:
    """``1 study``, ``2 studies``."""
    return f"{n} {one if n == 1 else many}"


class _Ids:
    """RSNA-style ``ID_<hex>`` names and ``2.25.<int>`` UIDs drawn from the study's RNG."""

    def __init__(self, rng: np.random.Generator, used: set[str]) -> None:
        self.rng, self.used = rng, used

    def rsna(self, digits: int) -> str:
        while True:
            name = f"{ID_PREFIX}{int(self.rng.integers(0, 16**digits)):0{digits}x}"
            if name not in self.used:
                self.used.add(name)
                return name

    def uid(self) -> str:
        return UID_ROOT_UUID + str(int.from_bytes(self.rng.bytes(16), "big"))


@contextlib.contextmanager
def _lenient_uids() -> Iterator[None]:
    """RSNA's ``ID_...`` UIDs are not valid UI values: do not warn about them while writing."""
    settings = dicom_config.settings
    saved = settings.reading_validation_mode, settings.writing_validation_mode
    settings.reading_validation_mode = settings.writing_validation_mode = dicom_config.IGNORE
    try:
        yield
    finally:
        settings.reading_validation_mode, settings.writing_validation_mode = saved


def _encode(hu: np.ndarray, storage: str) -> tuple[bytes, dict[str, object]]:
    """Stored pixel bytes and the pixel-module attributes for ``storage``."""
    if storage in (UNSIGNED, UNSIGNED12):
        stored = (hu.astype(np.int32) + 1024).astype("<u2")
        bits, rep, intercept = (12 if storage == UNSIGNED12 else 16), 0, -1024
    elif storage == SIGNED:
        stored, bits, rep, intercept = hu.astype("<i2"), 16, 1, 0
    elif storage == RSNA12:
        # RSNA quirk: 12-bit unsigned, intercept 0, negative HU wrapped by 4096.
        wrapped = np.where(hu >= 0, hu.astype(np.int32), hu.astype(np.int32) + 4096)
        stored, bits, rep, intercept = wrapped.astype("<u2"), 12, 0, 0
    else:
        raise ValueError(f"unknown storage {storage!r}; expected one of {', '.join(STORAGES)}")
    attrs = {
        "BitsAllocated": 16,
        "BitsStored": bits,
        "HighBit": bits - 1,
        "PixelRepresentation": rep,
        "RescaleIntercept": intercept,
        "RescaleSlope": 1,
        "RescaleType": "HU",
    }
    return stored.tobytes(), attrs


@dataclass(frozen=True)
class _Header:
    """Study-level header values, drawn once per study."""

    patient_id: str
    patient_name: str
    birth_date: str
    sex: str
    study_uid: str
    series_uid: str
    frame_uid: str | None
    accession: str
    study_date: str
    study_time: str
    kvp: int
    window: tuple
    spacing: float
    table_z: float

    @classmethod
    def draw(
        cls, ids: _Ids, rng: np.random.Generator, size: int, valid: bool, preset: Preset
    ) -> _Header:
        study_day = dt.date(2015, 1, 1) + dt.timedelta(days=int(rng.integers(0, 3650)))
        age_days = int(rng.integers(18 * 365, 95 * 365))
        birth = study_day - dt.timedelta(days=age_days)
        seconds = int(rng.integers(0, 86400))
        fov = draw(rng, preset.fov_mm)
        center, width = (
            round(draw(rng, preset.window_center)),
            round(draw(rng, preset.window_width)),
        )
        multi = rng.random() < MULTI_WINDOW
        window = ((center, center), (width, width)) if multi else (center, width)
        return cls(
            patient_id=ids.rsna(PATIENT_HEX),
            patient_name=f"{rng.choice(_LAST)}^{rng.choice(_FIRST)}",
            birth_date=birth.strftime("%Y%m%d"),
            sex=str(rng.choice(("F", "M"))),
            study_uid=ids.uid() if valid else ids.rsna(STUDY_HEX),
            series_uid=ids.uid() if valid else ids.rsna(STUDY_HEX),
            frame_uid=ids.uid() if valid else None,
            accession=str(int(rng.integers(10**7, 10**8))),
            study_date=study_day.strftime("%Y%m%d"),
            study_time=f"{seconds // 3600:02d}{seconds // 60 % 60:02d}{seconds % 60:02d}",
            kvp=int(rng.choice((100, 120, 120, 140))),
            window=window,
            spacing=round(fov / size, 6),
            table_z=round(float(rng.uniform(-250.0, 50.0)), 1),
        )


def _dataset(
    h: _Header, rendered: RenderedSlice, storage: str, image_id: str, sop_uid: str, *,
    number: int, z_table: float, thickness: float, size: int,
) -> FileDataset:  # fmt: skip
    """The CT Image Storage dataset of one slice, with Explicit VR Little Endian file meta."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(
        f"{image_id}.dcm", {}, file_meta=meta, preamble=b"\0" * 128, is_implicit_VR=False
    )
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = h.study_date
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = h.study_time
    ds.AccessionNumber = h.accession
    ds.Modality = "CT"
    ds.Manufacturer = "ichnode synth"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "CT HEAD"
    ds.SeriesDescription = "HEAD W/O"
    ds.PatientName = h.patient_name
    ds.PatientID = h.patient_id
    ds.PatientBirthDate = h.birth_date
    ds.PatientSex = h.sex
    ds.BodyPartExamined = "HEAD"
    ds.SliceThickness = f"{thickness:g}"
    ds.KVP = h.kvp
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = h.study_uid
    ds.SeriesInstanceUID = h.series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = 2
    ds.AcquisitionNumber = 1
    ds.InstanceNumber = number
    half = (size - 1) / 2.0 * h.spacing
    ds.ImagePositionPatient = [f"{-half:.4f}", f"{-half:.4f}", f"{z_table:.2f}"]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    if h.frame_uid is not None:
        ds.FrameOfReferenceUID = h.frame_uid
        ds.PositionReferenceIndicator = ""
    ds.SliceLocation = f"{z_table:.2f}"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = size
    ds.PixelSpacing = [f"{h.spacing:g}", f"{h.spacing:g}"]
    pixels, attrs = _encode(rendered.hu, storage)
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    ds.WindowCenter, ds.WindowWidth = (list(v) if isinstance(v, tuple) else v for v in h.window)
    ds.PixelData = pixels
    return ds


def _series_heights(head: Head, n_slices: int, preset: Preset) -> tuple[np.ndarray, float]:
    """Head-z (mm) of each slice (ascending) and the spacing.

    The series is centred between the foramen magnum and the vertex; a full-length series
    covers both, a short one (few slices, clipped spacing) the middle of the head.
    """
    bottom, top = series_span(head)
    spacing = (top - bottom) / max(n_slices - 1, 1)
    spacing = float(np.clip(round(spacing * 2.0) / 2.0, *preset.spacing_mm))
    centre = (bottom + top) / 2.0
    zs = centre + (np.arange(n_slices) - (n_slices - 1) / 2.0) * spacing
    return zs, spacing


def _render(
    rng: np.random.Generator, n_slices: int, size: int, spacing_xy: float,
    subtypes: Sequence[str], preset: Preset,
) -> tuple[list[RenderedSlice], float]:  # fmt: skip
    """Render a study; redraw its bleeds until each requested subtype shows on a slice."""
    head = sample_head(rng, preset)
    zs, spacing = _series_heights(head, n_slices, preset)
    scanner = Scanner(Phantom(head, size, spacing_xy), thickness=spacing)
    span = (float(zs[0]) / head.scale, float(zs[-1]) / head.scale)
    for _ in range(MAX_BLEED_ATTEMPTS):
        bleeds = [sample_bleed(name, head, span, rng, preset) for name in subtypes]
        slices = [scanner.render(float(z), bleeds, rng) for z in zs]
        shown = {name for s in slices for name, v in s.labels().items() if v}
        if set(subtypes) <= shown:
            return slices, spacing
        log.debug("bleeds %s not visible, redrawing", sorted(set(subtypes) - shown))
    raise RuntimeError(f"could not place {', '.join(subtypes)} in {n_slices} slices")


def _study(
    rng: np.random.Generator,
    *,
    n_slices: int,
    size: int,
    subtypes: Sequence[str],
    valid_uids: bool,
    storage: str,
    used: set[str],
    preset: Preset,
) -> list[StudySlice]:
    ids = _Ids(rng, used)
    header = _Header.draw(ids, rng, size, valid_uids, preset)
    rendered, spacing = _render(rng, n_slices, size, header.spacing, subtypes, preset)
    out = []
    last = max(len(rendered) - 1, 1)
    with _lenient_uids():
        for k, r in enumerate(rendered):
            image_id = ids.rsna(SOP_HEX)
            sop_uid = ids.uid() if valid_uids else image_id
            ds = _dataset(
                header, r, storage, image_id, sop_uid, number=k + 1,
                z_table=header.table_z + k * spacing, thickness=spacing, size=size,
            )  # fmt: skip
            out.append(
                StudySlice(
                    ds,
                    r.labels(),
                    image_id,
                    r.hu,
                    r.tissue,
                    r.bleed,
                    series_position=k / last,
                    pixels=r.pixel_counts(),
                    ideal_dprime=r.ideal_dprime,
                )  # fmt: skip
            )
    return out


def _check(size: int, n_slices: int, subtypes: Sequence[str], storage: str) -> None:
    if size < MIN_SIZE:
        raise ValueError(f"size {size} is below the minimum of {MIN_SIZE}")
    if n_slices < 1:
        raise ValueError(f"n_slices must be at least 1, not {n_slices}")
    unknown = [s for s in subtypes if s not in st.HEMORRHAGE_SUBTYPES]
    if unknown:
        raise ValueError(f"not hemorrhage subtypes: {unknown}; use {st.HEMORRHAGE_SUBTYPES}")
    if storage not in STORAGES:
        raise ValueError(f"unknown storage {storage!r}; expected one of {', '.join(STORAGES)}")


def synth_study(
    seed: int,
    n_slices: int = 24,
    size: int = 512,
    subtypes: Sequence[str] = (),
    valid_uids: bool = True,
    storage: str = UNSIGNED,
    preset: str = TRAIN,
) -> list[StudySlice]:
    """One synthetic study in memory, with the bleeds of ``subtypes`` forced into it.

    Every requested subtype is labelled on at least one slice; an empty ``subtypes`` gives a
    normal study. The datasets carry file meta and are ready to write or send. ``preset``
    names the family of parameter ranges (:data:`phantoms.presets.PRESETS`).
    """
    subtypes = tuple(dict.fromkeys(subtypes))
    _check(size, n_slices, subtypes, storage)
    chosen = get_preset(preset)
    rng = np.random.default_rng(seed)
    return _study(
        rng, n_slices=n_slices, size=size, subtypes=subtypes, valid_uids=valid_uids,
        storage=storage, used=set(), preset=chosen,
    )  # fmt: skip


def _draw_subtypes(rng: np.random.Generator) -> tuple[str, ...]:
    """No bleed (55 %), else one to three distinct subtypes."""
    if rng.random() >= BLEEDING_FRACTION:
        return ()
    count = int(rng.choice(len(BLEED_COUNT_WEIGHTS), p=BLEED_COUNT_WEIGHTS)) + 1
    names = list(SUBTYPE_WEIGHTS)
    weights = np.array(list(SUBTYPE_WEIGHTS.values()))
    picked = rng.choice(len(names), size=count, replace=False, p=weights / weights.sum())
    return tuple(names[i] for i in sorted(picked))


def _slice_row(s: StudySlice, preset: str) -> str:
    """The ``phantom_slices.csv`` row of one slice."""
    counts = [s.pixels[name] for name in st.HEMORRHAGE_SUBTYPES]
    return ",".join(
        [s.image_id, str(s.dataset.StudyInstanceUID), f"{s.series_position:.4f}",
         str(sum(counts)), *map(str, counts), preset, f"{s.ideal_dprime:.3f}"]
    )  # fmt: skip


def write_mask(path: Path, bleed: np.ndarray) -> None:
    """A slice's bleed map as an 8-bit greyscale PNG (lossless; a few hundred bytes)."""
    Image.fromarray(np.asarray(bleed, dtype=np.uint8)).save(path)


def read_mask(path: Path) -> np.ndarray:
    """The bleed map :func:`write_mask` wrote (uint8, 0 or 1 + a SUBTYPES index)."""
    with Image.open(path) as img:
        return np.asarray(img, dtype=np.uint8)


def _plans(
    studies: int, seed: int, preset: Preset
) -> list[tuple[np.random.Generator, int, str, tuple[str, ...]]]:
    """Each study's RNG (seeded ``(seed, i)``), slice count, storage and bleed subtypes."""
    plans = []
    for i in range(studies):
        rng = np.random.default_rng([seed, i])
        n = int(rng.integers(preset.slices[0], preset.slices[1] + 1))
        storage = str(rng.choice(STORAGES, p=STORAGE_WEIGHTS))
        plans.append((rng, n, storage, _draw_subtypes(rng)))
    return plans


def study_heads(
    studies: int, seed: int, size: int, preset: str = TRAIN, valid_uids: bool = False
) -> dict[str, Head]:
    """The anatomy and scanner draws (:class:`~phantoms.anatomy.Head`: noise, kernel, ...) of
    each study :func:`generate` writes with these arguments, by StudyInstanceUID (the
    ``study`` of ``phantom_slices.csv``), replayed from the seeds without rendering: to break
    results down by how a study was drawn."""
    chosen = get_preset(preset)
    used: set[str] = set()
    heads = {}
    for rng, _n, _storage, _subtypes in _plans(studies, seed, chosen):
        header = _Header.draw(_Ids(rng, used), rng, size, valid_uids, chosen)
        heads[header.study_uid] = sample_head(rng, chosen)  # what _render draws first
    return heads


def generate(
    out: Path,
    studies: int,
    seed: int = 0,
    size: int = 512,
    valid_uids: bool = False,
    progress: bool = True,
    preset: str = TRAIN,
) -> SynthSummary:
    """Write ``studies`` synthetic studies to ``out`` in the RSNA training layout.

    Study ``i`` draws everything (slice count, storage, bleeds, anatomy, noise) from the RNG
    seeded with ``(seed, i)`` and the ranges of ``preset``, so a run is reproducible file by
    file. ``OUT/phantom_slices.csv`` gets one row per slice (:data:`SLICES_COLUMNS`).
    """
    chosen = get_preset(preset)
    if studies < 1:
        raise IchnodeError(f"--studies must be at least 1, not {studies}")
    if size < MIN_SIZE:
        raise IchnodeError(f"--size must be at least {MIN_SIZE}, not {size}")
    out = Path(out)
    image_dir, mask_dir = out / IMAGE_DIR, out / MASK_DIR
    try:
        image_dir.mkdir(parents=True, exist_ok=True)
        mask_dir.mkdir(exist_ok=True)
    except OSError as exc:
        raise IchnodeError(f"cannot create {image_dir}: {exc.strerror or exc}") from None
    start = time.perf_counter()
    plans = _plans(studies, seed, chosen)
    positives = dict.fromkeys(st.SUBTYPES, 0)
    storages = dict.fromkeys(STORAGES, 0)
    rows: list[str] = []
    slice_rows: list[str] = [",".join(SLICES_COLUMNS)]
    used: set[str] = set()
    bleeding = 0
    bar = tqdm(
        total=sum(p[1] for p in plans),
        unit="slice",
        desc="synth",
        disable=None if progress else True,
    )
    with bar:
        for rng, n, storage, subtypes in plans:
            slices = _study(
                rng, n_slices=n, size=size, subtypes=subtypes, valid_uids=valid_uids,
                storage=storage, used=used, preset=chosen,
            )  # fmt: skip
            with _lenient_uids():
                for s in slices:
                    s.dataset.save_as(image_dir / f"{s.image_id}.dcm", enforce_file_format=True)
                    write_mask(mask_dir / f"{s.image_id}.png", s.bleed)
                    rows.extend(f"{s.image_id}_{name},{s.labels[name]}" for name in st.SUBTYPES)
                    slice_rows.append(_slice_row(s, chosen.name))
                    for name in st.SUBTYPES:
                        positives[name] += s.labels[name]
                    bar.update(1)
            bleeding += bool(subtypes)
            storages[storage] += 1
    (out / CSV_NAME).write_text("ID,Label\n" + "\n".join(rows) + "\n", encoding="ascii")
    (out / SLICES_CSV).write_text("\n".join(slice_rows) + "\n", encoding="ascii")
    summary = SynthSummary(
        studies=studies,
        slices=len(rows) // len(st.SUBTYPES),
        positives=positives,
        bleeding_studies=bleeding,
        seconds=time.perf_counter() - start,
        out=out,
        storages=storages,
    )
    log.debug("synth done: %s", summary)  # the CLI prints the summary itself
    return summary


__all__ = [
    "MASK_DIR",
    "SLICES_COLUMNS",
    "STORAGES",
    "StudySlice",
    "SynthSummary",
    "generate",
    "read_mask",
    "study_heads",
    "synth_study",
    "write_mask",
]
