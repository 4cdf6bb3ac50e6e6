"""Key Object Selection: flags the key slice(s) of a positive study for the reading list.

A KOS (TID 2010) titled "Of Interest" (CID 7010) whose description says what was flagged and
that it is an automated, non-diagnostic triage. PACS that show key images (most do) then open
the study at the slice the model found most suspicious.
"""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from ichnode.report.findings import ReportError, StudyFindings, character_set, check_uid
from ichnode.report.sr import (
    DEFAULT_DEVICE_NAME,
    DISCLAIMER,
    MANUFACTURER,
    check_sources,
    device_observer,
    find_source,
)

KOS_SERIES_DESCRIPTION = "ichnode ICH key images (not for diagnosis)"
KOS_SERIES_NUMBER = 9903
#: CID 7010 Key Object Selection Document Title.
TITLE_OF_INTEREST = codes.DCM.OfInterest  # 113000, DCM
#: TID 2010 Key Object Description is a TEXT of at most this many characters (UT in items).
MAX_DESCRIPTION = 1024


def build_kos(
    sources: Sequence[Dataset],
    findings: StudyFindings,
    *,
    key_sop_instance_uids: Sequence[str] | None = None,
    series_instance_uid: str | None = None,
    instance_number: int = 1,
    device_name: str = DEFAULT_DEVICE_NAME,
) -> Dataset:
    """A Key Object Selection document flagging the key slice(s) of a positive study.

    ``key_sop_instance_uids`` defaults to ``(findings.key_sop_instance_uid,)``. Raises
    :class:`ReportError` when nothing is flagged: a negative study gets no KOS.
    """
    if not isinstance(findings, StudyFindings):
        raise ReportError(f"findings must be a StudyFindings, got {type(findings).__name__}")
    if not findings.positive:
        raise ReportError("findings flag nothing; a KOS is only made for a positive study")
    check_sources(sources)
    if key_sop_instance_uids is None:
        key_sop_instance_uids = (findings.key_sop_instance_uid,)
    if isinstance(key_sop_instance_uids, str) or not key_sop_instance_uids:
        raise ReportError("key_sop_instance_uids must be a non-empty sequence of UIDs")
    keys = [
        find_source(sources, check_uid(uid, "key_sop_instance_uids"), "key_sop_instance_uids")
        for uid in dict.fromkeys(key_sop_instance_uids)
    ]
    if isinstance(instance_number, bool) or not isinstance(instance_number, int):
        raise ReportError(f"instance_number must be an integer, got {instance_number!r}")
    if series_instance_uid is None:
        series_instance_uid = hd.UID()
    check_uid(series_instance_uid, "series_instance_uid")
    if any(str(s.SeriesInstanceUID) == series_instance_uid for s in sources):
        raise ReportError("series_instance_uid must not be the series of a source image")

    description = (
        f"{findings.summary_line()}. {DISCLAIMER}. ichnode {findings.ichnode_version}, "
        f"model {findings.model_id}, result v{findings.version}."
    )[:MAX_DESCRIPTION]
    content = hd.ko.KeyObjectSelection(
        document_title=TITLE_OF_INTEREST,
        referenced_objects=keys,
        observer_device_context=device_observer(device_name, findings),
        description=description,
    )
    kos = hd.ko.KeyObjectSelectionDocument(
        evidence=keys,
        content=content,
        series_instance_uid=series_instance_uid,
        series_number=KOS_SERIES_NUMBER,
        sop_instance_uid=hd.UID(),
        instance_number=instance_number,
        manufacturer=MANUFACTURER,
        series_description=KOS_SERIES_DESCRIPTION,
        software_versions=findings.ichnode_version,
        manufacturer_model_name=findings.model_id[:64],
        specific_character_set=character_set(keys[0]),
    )
    return kos
