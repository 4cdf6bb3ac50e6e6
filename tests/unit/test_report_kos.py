"""Key Object Selection: flags the key slice of a positive study, valid DICOM."""

from __future__ import annotations

import pytest
from report_fixtures import (
    dciodvfy,
    dsrdump,
    headers,
    make_findings,
    roundtrip,
    synth_ct_study,
)

from ichnode.report import DISCLAIMER, ReportError, build_kos


@pytest.fixture(scope="module")
def sources():
    return headers(synth_ct_study(n_slices=4))


def test_kos_references_the_key_slice_in_the_same_study(sources, tmp_path):
    findings = make_findings(str(sources[2].SOPInstanceUID))
    kos = roundtrip(build_kos(sources, findings))
    assert kos.StudyInstanceUID == sources[0].StudyInstanceUID
    assert kos.PatientID == sources[0].PatientID
    refs = kos.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert [r.ReferencedSOPInstanceUID for r in refs.ReferencedSOPSequence] == [
        sources[2].SOPInstanceUID
    ]
    assert kos.SeriesInstanceUID != sources[0].SeriesInstanceUID


def test_kos_passes_dciodvfy_and_says_it_is_not_for_diagnosis(sources, tmp_path):
    findings = make_findings(str(sources[0].SOPInstanceUID))
    kos = build_kos(sources, findings)
    errors, _ = dciodvfy(kos, tmp_path, "kos")
    assert errors == []
    text = dsrdump(kos, tmp_path, "kos")
    assert '"Of Interest"' in text
    texts = [item.TextValue for item in kos.ContentSequence if "TextValue" in item]
    assert any(DISCLAIMER in t for t in texts)


def test_kos_can_flag_several_slices(sources):
    findings = make_findings(str(sources[0].SOPInstanceUID))
    uids = [str(sources[0].SOPInstanceUID), str(sources[3].SOPInstanceUID)]
    kos = build_kos(sources, findings, key_sop_instance_uids=uids)
    refs = kos.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert {r.ReferencedSOPInstanceUID for r in refs.ReferencedSOPSequence} == set(uids)


def test_negative_study_gets_no_kos(sources):
    with pytest.raises(ReportError, match="positive"):
        build_kos(sources, make_findings(str(sources[0].SOPInstanceUID), positive=False))


def test_unknown_key_uid_is_named(sources):
    findings = make_findings(str(sources[0].SOPInstanceUID))
    with pytest.raises(ReportError, match="key_sop_instance_uids"):
        build_kos(sources, findings, key_sop_instance_uids=["1.2.3.4"])
