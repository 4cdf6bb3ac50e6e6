"""Which report objects a result version gets, where they go, and building them.

Pure: no database and no store. The reporter (:mod:`ichnode.node.reporting`) reads a
version's inputs (:func:`ichnode.db.reports.inputs`) and the key slice, calls
:func:`delivery_targets` and :func:`build_objects`, writes what they return and records it.

Where a result goes: every configured destination, plus the sender of the study when its
calling AE title is in ``return_to_sender`` (AE title -> port), at the address the study came
from (``studies.calling_address``, written at receive time).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from pydicom.dataset import Dataset

from ichnode import __version__
from ichnode.config import Settings
from ichnode.db.models import StudyResult
from ichnode.errors import IchnodeError
from ichnode.imaging import input_to_display, pixel_spacing, preprocess_planes, to_hu
from ichnode.model import Checkpoint
from ichnode.report.findings import StudyFindings
from ichnode.report.kos import build_kos
from ichnode.report.saliency import grad_cam
from ichnode.report.sr import STUDY_ATTRIBUTES, build_sr
from ichnode.report.summary import build_summary
from ichnode.report_kind import ReportKind

log = logging.getLogger(__name__)

#: What a return-to-sender target receives (a Destination's default objects).
RETURN_OBJECTS = (ReportKind.SR, ReportKind.SUMMARY)
#: Destination name of a return-to-sender target: ``return:<calling AE>``.
RETURN_PREFIX = "return:"


class ReportingError(IchnodeError):
    """The report objects of a study result cannot be built (the message says why)."""


@dataclass(frozen=True)
class Target:
    """Where one result's objects go: a configured destination or the study's sender."""

    name: str
    ae_title: str
    host: str
    port: int
    objects: tuple[ReportKind, ...]
    #: A DICOMweb destination's URL (STOW-RS); None for DIMSE.
    url: str | None = None


def delivery_targets(
    settings: Settings, calling_ae: str | None, calling_address: str | None, study_tag: str = ""
) -> list[Target]:
    """The configured destinations, plus the sender when ``return_to_sender`` names its AE
    and its address is known (``study_tag``: the study's UID hash, for the log line)."""
    targets = [
        Target(
            d.name,
            d.ae_title,
            d.host,
            d.port,
            tuple(ReportKind(k) for k in d.objects),
            d.url if d.kind == "dicomweb" else None,
        )
        for d in settings.destinations
    ]
    port = settings.return_to_sender.get(calling_ae or "")
    if port and calling_ae:
        if calling_address is None:
            log.warning(
                "study %s: no recorded address for calling AE %s; not returned to sender",
                study_tag,
                calling_ae,
            )
        else:
            name = f"{RETURN_PREFIX}{calling_ae}"
            targets.append(Target(name, calling_ae, calling_address, port, RETURN_OBJECTS))
    return targets


def wanted(targets: Iterable[Target]) -> set[ReportKind]:
    """Every kind of object some target wants."""
    return {kind for target in targets for kind in target.objects}


def findings_of(result: StudyResult, key_uid: str, checkpoint: Checkpoint) -> StudyFindings:
    """The report builders' input for a result scored by ``checkpoint``."""
    if result.model_id != checkpoint.model_id:
        raise ReportingError(
            f"result v{result.version} was scored by {result.model_id}, "
            f"the node serves {checkpoint.model_id}"
        )
    return StudyFindings(
        probabilities=result.probabilities,
        thresholds=checkpoint.decision_thresholds,
        key_sop_instance_uid=key_uid,
        model_id=result.model_id,
        model_architecture=checkpoint.architecture,
        model_sha256=checkpoint.sha256,
        version=result.version,
        ichnode_version=__version__,
    )


def fill_type2(ds: Dataset) -> Dataset:
    """Add the patient/study attributes a source lacks as empty (Type 2) values."""
    for keyword in STUDY_ATTRIBUTES:
        if keyword not in ds:
            setattr(ds, keyword, "")
    return ds


def evidence_sources(rows: Sequence[tuple[str, str, str]], key: Dataset) -> list[Dataset]:
    """The study's instances as evidence for the SR and KOS, from database rows.

    Each row is (SOPClassUID, SOPInstanceUID, SeriesInstanceUID) as received; the patient and
    study attributes come from the key slice (same study). No stored file is re-read: reading
    every header of a 250-slice study took seconds, and the evidence needs only these UIDs.
    """
    key_uid = str(key.SOPInstanceUID)
    sources: list[Dataset] = []
    for sop_class, sop_uid, series_uid in rows:
        if sop_uid == key_uid:
            sources.append(key)
            continue
        ds = Dataset()
        if "SpecificCharacterSet" in key:  # the names below are in it (and the reports copy it)
            ds.SpecificCharacterSet = key.SpecificCharacterSet
        for keyword in STUDY_ATTRIBUTES:
            ds[keyword] = key[keyword]
        ds.SOPClassUID, ds.SOPInstanceUID, ds.SeriesInstanceUID = sop_class, sop_uid, series_uid
        sources.append(ds)
    return sources


def reference(
    study_uid: str, sop_class_uid: str, series_instance_uid: str, sop_instance_uid: str
) -> Dataset:
    """An earlier report object as the builders take a predecessor: its four UIDs."""
    ds = Dataset()
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_instance_uid
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = sop_instance_uid
    return ds


def build_objects(
    wanted: set[ReportKind],
    sources: list[Dataset],
    key: Dataset,
    findings: StudyFindings,
    checkpoint: Checkpoint,
    previous: dict[ReportKind, Dataset],
    neighbours: Sequence[Dataset | None] = (),
) -> dict[ReportKind, Dataset]:
    """The wanted report objects, each in the series of its predecessor when there is one.

    ``neighbours`` are the key slice's neighbours for a 2.5-D checkpoint (lowest z first, see
    :func:`ichnode.imaging.context_planes`); the saliency map is computed on that input."""
    built: dict[ReportKind, Dataset] = {}
    number = findings.version
    if ReportKind.SR in wanted:
        built[ReportKind.SR] = build_sr(
            sources, findings, instance_number=number, predecessor=previous.get(ReportKind.SR)
        )
    if ReportKind.SUMMARY in wanted:
        target = findings.saliency_subtype
        x = preprocess_planes(key, neighbours, checkpoint.spec)
        cam = grad_cam(checkpoint, x, target)
        # Over the key slice as the summary shows it (the model may see a resampled view).
        cam = input_to_display(cam, to_hu(key), pixel_spacing(key), checkpoint.spec)
        built[ReportKind.SUMMARY] = build_summary(
            key,
            findings,
            saliency=cam,
            saliency_label=target,
            series_instance_uid=_series(previous.get(ReportKind.SUMMARY)),
            instance_number=number,
        )
    if ReportKind.KOS in wanted and findings.positive:
        built[ReportKind.KOS] = build_kos(
            sources,
            findings,
            series_instance_uid=_series(previous.get(ReportKind.KOS)),
            instance_number=number,
        )
    return built


def _series(ds: Dataset | None) -> str | None:
    return None if ds is None else str(ds.SeriesInstanceUID)
