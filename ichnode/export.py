"""``ichnode export-reviewed``: the reviewed studies as training data, in the RSNA layout.

Each reviewed study's stored slices are copied to ``OUT/stage_2_train/ID_<hex>.dcm`` and
labelled in ``OUT/stage_2_train.csv`` (six ``ID,Label`` rows per slice, SUBTYPES order) from
the review that counts (:func:`ichnode.review.truth`): a study without a hemorrhage gives
every slice six zeros; one with a hemorrhage gives its marked slices the subtypes present and
``any``, and its other slices zeros. A study with a hemorrhage but no slice marked cannot be
labelled per slice and is left out (the summary counts it). ``ichnode train`` reads the folder
as it reads the Kaggle download.

``deidentify`` runs every copy through the DICOM PS3.15 basic application level
confidentiality profile as ``dicom-anonymizer`` implements it (names, IDs, dates emptied or
replaced, UIDs replaced consistently within the process, private tags removed), and the file
names are drawn from a per-export secret so they cannot be matched to the node's UIDs.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from ichnode.config import Settings
from ichnode.db import reviews as rows
from ichnode.errors import IchnodeError
from ichnode.review import Truth, truth
from ichnode.store import Store
from ichnode.subtypes import ANY, SUBTYPES

log = logging.getLogger(__name__)

#: The names ``ichnode train`` reads (training.dataset's CSV_NAME and IMAGE_DIR_NAME).
CSV_NAME = "stage_2_train.csv"
IMAGE_DIR = "stage_2_train"
#: PS3.15 Table CID 7050: "Basic Application Confidentiality Profile".
BASIC_PROFILE = ("113100", "DCM", "Basic Application Confidentiality Profile")


@dataclass
class ExportSummary:
    """What an export wrote."""

    out: Path
    studies: int = 0
    slices: int = 0
    #: Studies with a hemorrhage but no marked slice: not labelled per slice, left out.
    left_out: int = 0
    positives: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SUBTYPES, 0))
    deidentified: bool = False

    def __str__(self) -> str:
        found = ", ".join(f"{k} {v}" for k, v in self.positives.items() if v) or "none"
        text = (
            f"exported {self.studies} reviewed studies ({self.slices} slices; positive slices: "
            f"{found}) to {self.out}"
        )
        if self.left_out:
            text += f"; {self.left_out} studies with a hemorrhage but no marked slice left out"
        return text + (" (de-identified)" if self.deidentified else "")


def slice_labels(found: Truth, sop_uid: str) -> dict[str, int]:
    """The six labels of one slice of a study whose review says ``found``."""
    on = found.hemorrhage and found.slices is not None and sop_uid in found.slices
    return {name: int(on and (name == ANY or name in found.subtypes)) for name in SUBTYPES}


def _image_id(sop_uid: str, secret: bytes) -> str:
    return "ID_" + hashlib.sha256(secret + sop_uid.encode()).hexdigest()[:16]


def _deidentified_copy(source: Path, target: Path) -> None:
    """``source`` through the PS3.15 basic profile, written to ``target``."""
    import pydicom
    from dicomanonymizer import anonymize_dataset
    from pydicom.dataset import Dataset

    ds = pydicom.dcmread(source)
    anonymize_dataset(ds, delete_private_tags=True)
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = "PS3.15 basic profile (dicom-anonymizer)"
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = BASIC_PROFILE
    ds.DeidentificationMethodCodeSequence = [code]
    ds.save_as(target, enforce_file_format=True)


def export_reviewed(
    settings: Settings, out: Path, *, since: datetime | None = None, deidentify: bool = False
) -> ExportSummary:
    """Write the studies reviewed since ``since`` (the newest review of each) to ``out``."""
    from ichnode.db.session import open_database

    out = Path(out)
    if (out / CSV_NAME).exists():
        raise IchnodeError(f"{out / CSV_NAME} exists: export into a new folder")
    if not Path(settings.store).is_dir():
        raise IchnodeError(f"no store folder at {settings.store} (check store)")
    store = Store(settings.store)
    engine, sessions = open_database(settings, create=False)
    try:
        with sessions() as session:
            reviewed = [(s.id, truth(r, res)) for r, res, s in rows.latest_reviews(session, since)]
            labelled = {sid: t for sid, t in reviewed if not t.hemorrhage or t.slices}
            instances = rows.scored_instances(session, list(labelled))
            files = [(i.study_id, i.sop_instance_uid, str(i.path)) for i in instances]
    finally:
        engine.dispose()
    summary = ExportSummary(out, left_out=len(reviewed) - len(labelled), deidentified=deidentify)
    try:
        (out / IMAGE_DIR).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise IchnodeError(f"cannot create {out / IMAGE_DIR}: {exc.strerror or exc}") from None
    secret = os.urandom(16) if deidentify else b""
    lines = ["ID,Label"]
    studies: set[int] = set()
    for study_id, sop_uid, relative in files:
        source = store.path(relative)
        if not source.is_file():
            log.warning("export: stored file of a scored instance is missing; skipped")
            continue
        image_id = _image_id(sop_uid, secret)
        target = out / IMAGE_DIR / f"{image_id}.dcm"
        if deidentify:
            _deidentified_copy(source, target)
        else:
            shutil.copyfile(source, target)
        labels = slice_labels(labelled[study_id], sop_uid)
        lines.extend(f"{image_id}_{name},{labels[name]}" for name in SUBTYPES)
        for name, value in labels.items():
            summary.positives[name] += value
        summary.slices += 1
        studies.add(study_id)
    summary.studies = len(studies)
    partial = out / f".{CSV_NAME}.tmp"
    partial.write_text("\n".join(lines) + "\n", encoding="ascii")
    partial.replace(out / CSV_NAME)  # the CSV appears once every file it names is in place
    log.info("export: %d studies, %d slices", summary.studies, summary.slices)
    return summary
