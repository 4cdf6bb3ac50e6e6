"""The Comprehensive SR: valid DICOM, renders the findings, files into the study."""

from __future__ import annotations

import copy
import subprocess

import pytest
from pydicom.sr._concepts_dict import concepts
from pydicom.sr.codedict import codes
from report_fixtures import (
    DSRDUMP,
    dciodvfy,
    encode,
    headers,
    make_findings,
    roundtrip,
    synth_ct_study,
)

from ichnode.report import DISCLAIMER, ReportError, build_kos, build_sr, device_uid
from ichnode.report.sr import COMPREHENSIVE_SR, FINDING_SITES, SR_SERIES_DESCRIPTION
from ichnode.subtypes import DISPLAY_NAMES, SNOMED_CT, SUBTYPES

COPIED = (
    "StudyInstanceUID",
    "AccessionNumber",
    "ReferringPhysicianName",
    "PatientID",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "StudyID",
)


@pytest.fixture(scope="module")
def sources():
    return headers(synth_ct_study(n_slices=5))


@pytest.fixture(scope="module")
def findings(sources):
    return make_findings(str(sources[2].SOPInstanceUID))


@pytest.fixture(scope="module")
def sr(sources, findings):
    return build_sr(sources, findings)


def _dump(sr, tmp_path) -> str:
    path = tmp_path / "sr.dcm"
    path.write_bytes(encode(sr))
    proc = subprocess.run([DSRDUMP, "+Pl", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_sr_round_trips_under_strict_writing(sr):
    back = roundtrip(sr)
    assert back.SOPClassUID == COMPREHENSIVE_SR
    assert back.Modality == "SR"


def test_sr_passes_dciodvfy_without_errors(sr, tmp_path):
    errors, _warnings = dciodvfy(sr, tmp_path, "sr")
    assert errors == []


def test_sr_copies_patient_and_study_attributes(sr, sources):
    for keyword in COPIED:
        assert sr[keyword].value == sources[0][keyword].value, keyword


def test_sr_is_a_new_series_with_a_non_diagnostic_description(sr, sources):
    assert sr.SeriesInstanceUID not in {s.SeriesInstanceUID for s in sources}
    assert sr.SeriesDescription == SR_SERIES_DESCRIPTION
    assert "not for diagnosis" in sr.SeriesDescription


def test_sr_references_every_source_as_evidence(sr, sources):
    referenced = {
        item.ReferencedSOPInstanceUID
        for study in sr.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for item in series.ReferencedSOPSequence
    }
    assert referenced == {s.SOPInstanceUID for s in sources}


def test_dsrdump_renders_every_finding_with_its_probability_and_call(sr, findings, tmp_path):
    text = _dump(sr, tmp_path)
    for name in SUBTYPES:
        concept = SNOMED_CT[name]
        meaning = concept.meaning if concept else DISPLAY_NAMES[name]
        call = "Present" if findings.flagged[name] else "Absent"
        assert f'<contains CODE:(,,"{meaning}")=' in text
        assert (
            f'"{meaning}")=({"52101004" if call == "Present" else "272519000"},SCT,"{call}")'
            in text
        )
        assert f'NUM:(,,"Probability")="{findings.probabilities[name]:g}"' in text
    assert DISCLAIMER in text
    assert f"sha256={findings.model_sha256}" in text


def test_every_finding_names_its_site_with_a_dicom_code(sr, tmp_path):
    text = _dump(sr, tmp_path)
    groups = text.split('CONTAINER:(,,"Measurement Group")')[1:]
    assert len(groups) == len(SUBTYPES)
    expected = {
        "epidural": ("1101003", "Intracranial"),
        "intraparenchymal": ("12738006", "Brain"),
        "intraventricular": ("35764002", "Brain ventricle"),
        "subarachnoid": ("33930006", "Cranial Subarachnoid Space"),
        "subdural": ("1101003", "Intracranial"),
        "any": ("1101003", "Intracranial"),
    }
    for name, group in zip(SUBTYPES, groups, strict=True):
        assert DISPLAY_NAMES[name] in group
        code, meaning = expected[name]
        assert f'<has concept mod CODE:(,,"Finding Site")=({code},SCT,"{meaning}")>' in group
    for code in FINDING_SITES.values():  # each is in DICOM PS3.16 (pydicom's copy of it)
        assert code.scheme_designator == "SCT"
        assert any(code.value in by_code for by_code in concepts["SCT"].values())


def test_sr_observer_is_the_device_with_a_stable_uid(sources, findings, tmp_path):
    a = build_sr(sources, findings, device_name="NODE-A")
    text = _dump(a, tmp_path)
    assert f'"Device Observer UID")="{device_uid("NODE-A")}"' in text
    assert device_uid("NODE-A") == device_uid("NODE-A") != device_uid("NODE-B")


def test_measurement_groups_cite_the_key_slice(sr, findings):
    text = str(sr)
    assert text.count(findings.key_sop_instance_uid) >= len(SUBTYPES)


def test_predecessor_is_listed_and_series_is_kept(sources, findings, sr):
    second = build_sr(
        sources,
        make_findings(findings.key_sop_instance_uid, version=2),
        predecessor=roundtrip(sr),
        instance_number=2,
    )
    pre = second.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0]
    assert pre.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == sr.SOPInstanceUID
    assert second.SeriesInstanceUID == sr.SeriesInstanceUID
    assert second.SOPInstanceUID != sr.SOPInstanceUID
    assert second.InstanceNumber == 2


def test_predecessor_passes_dciodvfy(sources, findings, sr, tmp_path):
    second = build_sr(sources, findings, predecessor=roundtrip(sr), instance_number=2)
    errors, _ = dciodvfy(second, tmp_path, "sr2")
    assert errors == []


def test_key_slice_not_among_sources_is_refused(sources):
    with pytest.raises(ReportError, match="key_sop_instance_uid"):
        build_sr(sources, make_findings("1.2.3.999"))


def test_sources_from_two_studies_are_refused(sources, findings):
    other = headers(synth_ct_study(n_slices=1, seed=1))
    with pytest.raises(ReportError, match=r"sources\[5\]"):
        build_sr(list(sources) + other, findings)


def test_source_without_patient_id_is_named(sources, findings):
    broken = copy.deepcopy(list(sources))
    del broken[1].PatientID
    with pytest.raises(ReportError, match=r"sources\[1\] has no PatientID"):
        build_sr(broken, findings)


def test_predecessor_that_is_not_an_sr_is_refused(sources, findings):
    with pytest.raises(ReportError, match="predecessor"):
        build_sr(sources, findings, predecessor=sources[0])


def test_bad_instance_number_is_named(sources, findings):
    with pytest.raises(ReportError, match="instance_number"):
        build_sr(sources, findings, instance_number=0)


def test_present_absent_codes_are_the_dicom_ones():
    assert (codes.SCT.Present.value, codes.SCT.Absent.value) == ("52101004", "272519000")


@pytest.mark.parametrize(
    ("charset", "written"),
    [
        (["", "ISO 2022 IR 87"], ["ISO 2022 IR 6", "ISO 2022 IR 87"]),  # highdicom refused ''
        pytest.param(  # a value pydicom reads leniently (it warns): written as UTF-8
            "ISO_IR100",
            "ISO_IR 192",
            marks=pytest.mark.filterwarnings(
                r"ignore:Unknown encoding 'ISO_IR100':UserWarning:pydicom\."
            ),
        ),
    ],
)
def test_names_keep_their_characters_whatever_the_source_character_set(
    sources, findings, charset, written
):
    name = "Yamada^Tarou=山田^太郎" if "87" in str(charset) else "Müller^Jürgen"
    named = []
    for ds in sources:
        ds = copy.deepcopy(ds)
        ds.SpecificCharacterSet, ds.PatientName = charset, name
        named.append(roundtrip(ds))
    for build in (build_sr, build_kos):
        back = roundtrip(build(named, findings))
        assert back.SpecificCharacterSet == written and str(back.PatientName) == name
