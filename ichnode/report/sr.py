"""The Structured Report: a TID 1500 Measurement Report in a Comprehensive SR document.

One image-level measurement group (TID 1501) per label: the finding and its finding site, the
probability as a NUM, the Present/Absent call as a qualitative evaluation, the algorithm
(TID 4019) with the model name, architecture, weights hash and threshold as parameters, and
the key slice as source image. The observer is the node itself (a device with a UID derived
from its name). Patient and study attributes are copied from the sources so the report files
into the same study.

Comprehensive SR rather than Enhanced SR or Comprehensive 3D SR: see docs/report.md.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from io import BytesIO

import highdicom as hd
from highdicom.coding_schemes import CodingSchemeIdentificationItem
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import UID

from ichnode.report.findings import ReportError, StudyFindings, character_set, check_uid
from ichnode.store import uid_hash
from ichnode.subtypes import (
    ANY,
    DISPLAY_NAMES,
    EPIDURAL,
    INTRAPARENCHYMAL,
    INTRAVENTRICULAR,
    SNOMED_CT,
    SUBARACHNOID,
    SUBDURAL,
    SUBTYPES,
)

log = logging.getLogger(__name__)

#: Document and series labels. Every object ichnode sends says it is not for diagnosis.
DISCLAIMER = "Automated triage, not for diagnosis"
SR_SERIES_DESCRIPTION = "ichnode ICH triage (not for diagnosis)"
SR_SERIES_NUMBER = 9901
MANUFACTURER = "ichnode"
ALGORITHM_NAME = "ichnode"
DEFAULT_DEVICE_NAME = "ICHNODE"

COMPREHENSIVE_SR = UID("1.2.840.10008.5.1.4.1.1.88.33")
SR_SOP_CLASSES = frozenset(
    {
        UID("1.2.840.10008.5.1.4.1.1.88.22"),  # Enhanced SR
        COMPREHENSIVE_SR,
        UID("1.2.840.10008.5.1.4.1.1.88.34"),  # Comprehensive 3D SR
    }
)

#: Local coding scheme for labels without a confirmed SNOMED CT code (PS3.3 8.1: "99" prefix).
LOCAL_SCHEME = "99ICHNODE"


def local_coding_scheme() -> CodingSchemeIdentificationItem:
    """CodingSchemeIdentificationSequence item that declares :data:`LOCAL_SCHEME`."""
    return CodingSchemeIdentificationItem(
        designator=LOCAL_SCHEME,
        name="ichnode local codes for RSNA hemorrhage labels",
        responsible_organization="ichnode",
    )


#: Coded concepts (PS3.16 via pydicom's code dictionary, or cited).
PROCEDURE_CT_HEAD = codes.SCT.ComputedTomographyOfHead  # 303653007, SCT
PRESENT = codes.SCT.Present  # 52101004, SCT (CID 240/241)
ABSENT = codes.SCT.Absent  # 272519000, SCT (CID 240/241)
PROBABILITY = codes.DCM.Probability  # 122157, DCM
FINDING = codes.DCM.Finding  # 121071, DCM
COMMENT = codes.DCM.Comment  # 121106, DCM
DEVICE = codes.DCM.Device  # 121007, DCM (CID 270 observer type)
#: Where each label lies (TID 1501 "Finding Site"): SNOMED CT body structures from pydicom's
#: copy of the DICOM PS3.16 concept list, so each is a code DICOM itself uses. This also
#: anchors the labels that have no confirmed SNOMED CT finding code. PS3.16 lists no epidural
#: (extradural) or subdural space, so those two say only "Intracranial" rather than borrow a
#: neighbouring structure such as the dura mater.
FINDING_SITES = {
    EPIDURAL: codes.SCT.Intracranial,  # 1101003 (CID 4, 7151)
    INTRAPARENCHYMAL: codes.SCT.Brain,  # 12738006 (CID 4, 7151)
    INTRAVENTRICULAR: codes.SCT.BrainVentricle,  # 35764002 (CID 7151)
    SUBARACHNOID: codes.SCT.CranialSubarachnoidSpace,  # 33930006 (CID 7140)
    SUBDURAL: codes.SCT.Intracranial,
    ANY: codes.SCT.Intracranial,
}
#: TID 1500 row "Qualitative Evaluations" container.
QUALITATIVE_EVALUATIONS = hd.sr.CodedConcept("C0034375", "UMLS", "Qualitative Evaluations")
#: UCUM annotation for a dimensionless probability in [0, 1].
UNIT_PROBABILITY = hd.sr.CodedConcept("{probability}", "UCUM", "probability")

#: Namespace for device UIDs: the same device name always gives the same UID (2.25 form).
_DEVICE_NAMESPACE = uuid.UUID("6f1d3c3e-5b0e-4c55-9a43-1c9d2f1e7a10")

#: Patient and study attributes every source must have (Type 2: may be empty, not absent).
STUDY_ATTRIBUTES = (
    "PatientID",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
)


def device_uid(device_name: str) -> str:
    """A stable UID for the node as an SR observer device, derived from its name."""
    return f"2.25.{uuid.uuid5(_DEVICE_NAMESPACE, device_name).int}"


def finding_concept(subtype: str) -> hd.sr.CodedConcept:
    """The coded concept of a label: SNOMED CT where confirmed, else ichnode's local code."""
    concept = SNOMED_CT.get(subtype)
    if concept is not None:
        return hd.sr.CodedConcept(concept.code, "SCT", concept.meaning)
    return hd.sr.CodedConcept(subtype, LOCAL_SCHEME, DISPLAY_NAMES[subtype])


def device_observer(device_name: str, findings: StudyFindings) -> hd.sr.ObserverContext:
    """Observer context (TID 1002/1004) for the node as the observing device."""
    if not isinstance(device_name, str) or not device_name.strip() or len(device_name) > 64:
        raise ReportError(f"device_name must be 1-64 characters, got {device_name!r}")
    return hd.sr.ObserverContext(
        observer_type=DEVICE,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=device_uid(device_name),
            name=device_name,
            manufacturer_name=MANUFACTURER,
            model_name=findings.model_architecture[:64],
        ),
    )


def check_sources(sources: Sequence[Dataset], argument: str = "sources") -> str:
    """Validate the source instances (one study, complete patient/study headers).

    Returns the StudyInstanceUID. Pixel data is not needed: headers read with
    ``stop_before_pixels=True`` are enough.
    """
    if isinstance(sources, Dataset) or not isinstance(sources, Sequence) or not sources:
        raise ReportError(f"{argument} must be a non-empty sequence of pydicom datasets")
    study_uid = None
    seen: set[str] = set()
    for i, ds in enumerate(sources):
        if not isinstance(ds, Dataset):
            raise ReportError(f"{argument}[{i}] is a {type(ds).__name__}, not a pydicom Dataset")
        for keyword in ("SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID", *STUDY_ATTRIBUTES):
            if keyword not in ds:
                raise ReportError(f"{argument}[{i}] has no {keyword}")
        for keyword in ("SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID"):
            check_uid(str(ds[keyword].value), f"{argument}[{i}].{keyword}")
        if study_uid is None:
            study_uid = str(ds.StudyInstanceUID)
        elif str(ds.StudyInstanceUID) != study_uid:
            raise ReportError(f"{argument}[{i}] belongs to another study than {argument}[0]")
        if str(ds.SOPInstanceUID) in seen:
            raise ReportError(f"{argument}[{i}] repeats SOPInstanceUID of an earlier source")
        seen.add(str(ds.SOPInstanceUID))
    assert study_uid is not None
    return study_uid


def find_source(sources: Sequence[Dataset], sop_instance_uid: str, argument: str) -> Dataset:
    """The source with this SOPInstanceUID, or :class:`ReportError` naming ``argument``."""
    for ds in sources:
        if str(ds.SOPInstanceUID) == sop_instance_uid:
            return ds
    raise ReportError(f"{argument} {sop_instance_uid} is not among the sources")


def _measurement_group(
    subtype: str, findings: StudyFindings, key: Dataset
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    concept = finding_concept(subtype)
    algorithm = hd.sr.AlgorithmIdentification(
        name=ALGORITHM_NAME,
        version=findings.ichnode_version,
        parameters=[
            f"model={findings.model_id}",
            f"architecture={findings.model_architecture}",
            f"sha256={findings.model_sha256}",
            f"threshold={findings.thresholds[subtype]:.4f}",
        ],
    )
    probability = hd.sr.Measurement(
        name=PROBABILITY,
        value=round(findings.probabilities[subtype], 6),
        unit=UNIT_PROBABILITY,
    )
    call = hd.sr.QualitativeEvaluation(
        name=concept, value=PRESENT if findings.flagged[subtype] else ABSENT
    )
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=hd.UID(), identifier=f"{DISPLAY_NAMES[subtype]} (automated)"
        ),
        finding_type=concept,
        algorithm_id=algorithm,
        finding_sites=[hd.sr.FindingSite(FINDING_SITES[subtype])],
        measurements=[probability],
        qualitative_evaluations=[call],
        source_images=[
            hd.sr.SourceImageForMeasurementGroup(
                referenced_sop_class_uid=str(key.SOPClassUID),
                referenced_sop_instance_uid=str(key.SOPInstanceUID),
            )
        ],
    )


def _disclaimer_container(findings: StudyFindings) -> hd.sr.ContainerContentItem:
    """TID 1500 "Qualitative Evaluations": the non-diagnostic statement as TEXT items."""
    container = hd.sr.ContainerContentItem(
        name=QUALITATIVE_EVALUATIONS,
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
    )
    text = (
        f"{DISCLAIMER}. This report was produced automatically by ichnode "
        f"{findings.ichnode_version} (model {findings.model_id}) to prioritise reading; it is "
        "not a diagnosis and must not replace review of the images by a qualified reader. "
        f"Result: {findings.summary_line()}. Result version {findings.version}."
    )
    container.ContentSequence = [  # type: ignore[assignment]  # pydicom accepts a list
        hd.sr.TextContentItem(
            name=COMMENT, value=text, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
        )
    ]
    return container


def _check_predecessor(predecessor: Dataset, study_uid: str) -> None:
    if not isinstance(predecessor, Dataset):
        raise ReportError(
            f"predecessor must be a pydicom Dataset, got {type(predecessor).__name__}"
        )
    for keyword in ("SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID"):
        if keyword not in predecessor:
            raise ReportError(f"predecessor has no {keyword}")
    if UID(str(predecessor.SOPClassUID)) not in SR_SOP_CLASSES:
        raise ReportError("predecessor is not a structured report (SOPClassUID)")
    if str(predecessor.StudyInstanceUID) != study_uid:
        raise ReportError("predecessor belongs to another study than the sources")


def build_sr(
    sources: Sequence[Dataset],
    findings: StudyFindings,
    *,
    series_instance_uid: str | None = None,
    instance_number: int = 1,
    predecessor: Dataset | None = None,
    device_name: str = DEFAULT_DEVICE_NAME,
) -> Dataset:
    """The Comprehensive SR (TID 1500) that carries ``findings`` for the study of ``sources``.

    ``sources`` are the study's instances (headers suffice); all are referenced as evidence.
    A new series is made unless ``series_instance_uid`` is given; with a ``predecessor`` (the
    previous SR of this study, after the study was reopened) the default series is the
    predecessor's and the new document lists it in PredecessorDocumentsSequence.
    """
    if not isinstance(findings, StudyFindings):
        raise ReportError(f"findings must be a StudyFindings, got {type(findings).__name__}")
    study_uid = check_sources(sources)
    key = find_source(sources, findings.key_sop_instance_uid, "findings.key_sop_instance_uid")
    if isinstance(instance_number, bool) or not isinstance(instance_number, int):
        raise ReportError(f"instance_number must be an integer, got {instance_number!r}")
    if instance_number < 1:
        raise ReportError(f"instance_number must be >= 1, got {instance_number}")
    if predecessor is not None:
        _check_predecessor(predecessor, study_uid)
        if series_instance_uid is None:
            series_instance_uid = str(predecessor.SeriesInstanceUID)
    if series_instance_uid is None:
        series_instance_uid = hd.UID()
    check_uid(series_instance_uid, "series_instance_uid")
    if any(str(s.SeriesInstanceUID) == series_instance_uid for s in sources):
        raise ReportError("series_instance_uid must not be the series of a source image")

    observer = device_observer(device_name, findings)
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=PROCEDURE_CT_HEAD,
        imaging_measurements=[_measurement_group(s, findings, key) for s in SUBTYPES],
    )
    report[0].ContentSequence.append(_disclaimer_container(findings))

    sr = hd.sr.ComprehensiveSR(
        evidence=list(sources),
        content=report[0],
        series_instance_uid=series_instance_uid,
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=hd.UID(),
        instance_number=instance_number,
        manufacturer=MANUFACTURER,
        is_complete=True,
        is_final=False,
        is_verified=False,
        previous_versions=[predecessor] if predecessor is not None else None,
        series_description=SR_SERIES_DESCRIPTION,
        software_versions=findings.ichnode_version,
        manufacturer_model_name=findings.model_id[:64],
        coding_schemes=[local_coding_scheme()],
        specific_character_set=character_set(sources[0]),
    )
    log.info(
        "built SR",
        extra={
            "sop_instance_uid_hash": uid_hash(str(sr.SOPInstanceUID)),
            "study_uid_hash": uid_hash(study_uid),
            "model": findings.model_id,
            "version": findings.version,
            "positive": findings.positive,
        },
    )
    return sr


def to_bytes(ds: Dataset) -> bytes:
    """Encode a report object as a DICOM Part 10 file (what the outbox sends or stores)."""
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


__all__ = [
    "DISCLAIMER",
    "build_sr",
    "device_uid",
    "finding_concept",
    "to_bytes",
]
