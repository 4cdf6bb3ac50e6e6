"""ichnode serve, in process: C-STORE over real associations, stored, scored and resulted.

Runs on both database backends (the ``db_url`` fixture is parametrised over SQLite and
PostgreSQL).
"""

from __future__ import annotations

import threading

import numpy as np
import pydicom
import pytest
from dicom_client import echo, send, send_raw
from helpers import ct_dataset, run_dcmtk, sample_file, study, wait_for, write_all
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.tag import Tag
from pydicom.uid import generate_uid
from sqlalchemy import func, select

from ichnode.db.models import Instance, InstanceStatus, Prediction, Series, Study
from ichnode.node.scp import CANNOT_UNDERSTAND, DATASET_DOES_NOT_MATCH, SUCCESS
from ichnode.predict import predict_folder
from ichnode.results import study_detail
from ichnode.subtypes import SUBTYPES


def _detail(node, study_uid):
    with node.sessions() as session:
        return study_detail(session, study_uid)


def _resulted(node, study_uid, version=1):
    detail = _detail(node, study_uid)
    return (
        detail
        if detail and detail["version"] >= version and detail["status"] == "resulted"
        else None
    )


def _instances(node):
    with node.sessions() as session:
        return session.scalars(select(Instance).order_by(Instance.id)).all()


def test_echo_answers_success_to_dcmtk_and_pynetdicom(scp_factory):
    node = scp_factory()
    done = run_dcmtk("echoscu", "-aec", "ICHNODE", "127.0.0.1", str(node.settings.port))
    assert done.returncode == 0, done.stderr
    assert echo(node.settings.port) == SUCCESS


def test_dcmtk_storescu_study_is_stored_scored_and_resulted(node_factory, tmp_path, model_path):
    node = node_factory()
    files = write_all(study(6, size=96), tmp_path / "send")
    done = run_dcmtk(
        "storescu", "-aec", "ICHNODE", "127.0.0.1", str(node.settings.port), *map(str, files)
    )
    assert done.returncode == 0, done.stderr
    study_uid = pydicom.dcmread(files[0]).StudyInstanceUID
    detail = wait_for(lambda: _resulted(node, study_uid), timeout=30)
    assert detail["n_instances"] == 6 and detail["version"] == 1
    # Every slice is on disk, done, and scored exactly as `ichnode predict FOLDER` scores the
    # study: the study model over the slices in z order (refined slice probabilities), and the
    # study's own probabilities.
    scores = predict_folder(tmp_path / "send", model=model_path, device="cpu")
    [expected_study], errors = scores.studies, scores.errors
    assert errors == [] and expected_study.refined
    expected = {r.sop_instance_uid: r.prediction.probabilities for r in expected_study.slices}
    for inst in detail["instances"]:
        assert inst["status"] == "done"
        for name in SUBTYPES:
            assert inst["probabilities"][name] == pytest.approx(
                expected[inst["sop_instance_uid"]][name], abs=1e-5
            )
    for name in SUBTYPES:
        assert detail["probabilities"][name] == pytest.approx(
            expected_study.probabilities[name], abs=1e-5
        )
    assert detail["flagged"] == expected_study.flagged
    assert detail["flagged_subtypes"] == expected_study.flagged_subtypes
    # The key slice has the highest (refined) `any`.
    key = max(detail["instances"], key=lambda i: i["probabilities"]["any"])
    assert detail["key_sop_instance_uid"] == key["sop_instance_uid"]
    # Instances come back ordered by z.
    zs = [i["z"] for i in detail["instances"]]
    assert zs == sorted(zs)
    for inst in _instances(node):
        assert node.store.path(inst.path).is_file()


@pytest.mark.parametrize("name", ["693_UNCR.dcm", "693_J2KR.dcm", "693_J2KI.dcm", "CT_small.dcm"])
def test_transfer_syntaxes_are_stored_as_received_and_scored(node_factory, name):
    node = node_factory()
    source = pydicom.dcmread(sample_file(name))
    assert send(node.settings.port, [source]) == [SUCCESS]
    inst = wait_for(lambda: [i for i in _instances(node) if i.status == InstanceStatus.DONE])[0]
    assert inst.transfer_syntax_uid == source.file_meta.TransferSyntaxUID
    stored = pydicom.dcmread(node.store.path(inst.path))
    assert stored.file_meta.TransferSyntaxUID == source.file_meta.TransferSyntaxUID
    assert stored.PixelData == source.PixelData  # no re-encoding


def test_jpeg_ls_from_dcmtk_is_received_and_scored(node_factory, tmp_path):
    node = node_factory()
    out = tmp_path / "jls.dcm"
    assert run_dcmtk("dcmcjpls", str(sample_file("693_UNCR.dcm")), str(out)).returncode == 0
    done = run_dcmtk(
        "storescu", "-xt", "-aec", "ICHNODE", "127.0.0.1", str(node.settings.port), str(out)
    )
    assert done.returncode == 0, done.stderr
    inst = wait_for(lambda: [i for i in _instances(node) if i.status == InstanceStatus.DONE])[0]
    assert inst.transfer_syntax_uid == "1.2.840.10008.1.2.4.80"


@pytest.mark.every_backend  # concurrent writers: locks differ
def test_four_associations_at_once_are_all_stored_and_scored(node_factory):
    node = node_factory()
    studies = [study(5, size=64) for _ in range(4)]
    statuses: list[list[int]] = [[] for _ in studies]

    def sender(i: int) -> None:
        statuses[i] = send(node.settings.port, studies[i], calling_ae=f"SCU{i}")

    threads = [threading.Thread(target=sender, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert all(s == [SUCCESS] * 5 for s in statuses)
    for slices in studies:
        wait_for(lambda slices=slices: _resulted(node, slices[0].StudyInstanceUID), timeout=60)
    assert sum(i.status == InstanceStatus.DONE for i in _instances(node)) == 20


@pytest.mark.every_backend  # concurrent writers: locks differ
def test_same_instance_twice_is_success_and_scored_once(node_factory):
    node = node_factory()
    slices = study(2, size=64)
    assert send(node.settings.port, slices) == [SUCCESS, SUCCESS]
    assert send(node.settings.port, slices[:1]) == [SUCCESS]
    wait_for(lambda: _resulted(node, slices[0].StudyInstanceUID))
    with node.sessions() as session:
        assert session.scalar(select(func.count()).select_from(Prediction)) == 2
        first = session.scalar(
            select(Instance).where(Instance.sop_instance_uid == slices[0].SOPInstanceUID)
        )
        assert first.times_received == 2


@pytest.mark.every_backend  # concurrent writers: locks differ
def test_slice_arriving_after_the_result_reopens_the_study_as_a_new_version(node_factory):
    node = node_factory()
    slices = study(3, size=64)
    send(node.settings.port, slices[:2])
    wait_for(lambda: _resulted(node, slices[0].StudyInstanceUID))
    send(node.settings.port, slices[2:])
    detail = wait_for(lambda: _resulted(node, slices[0].StudyInstanceUID, version=2))
    assert [v["version"] for v in detail["versions"]] == [1, 2]
    assert detail["n_instances"] == 3


@pytest.mark.filterwarnings(r"ignore:Invalid value for VR UI:UserWarning:pydicom\.")  # on purpose
def test_invalid_uid_is_refused_with_a900_and_nothing_is_kept(scp_factory):
    node = scp_factory()
    ds = study(1, size=32)[0]
    ds.StudyInstanceUID = "1.2.3.abc"
    assert send(node.settings.port, [ds]) == [DATASET_DOES_NOT_MATCH]
    assert _instances(node) == []
    assert not any(p.is_file() for p in node.store.root.rglob("*"))
    assert echo(node.settings.port) == SUCCESS  # still up


def test_missing_sop_instance_uid_is_refused(scp_factory):
    node = scp_factory()
    ds = study(1, size=32)[0]
    ds.SOPInstanceUID = "1.2.3.4"
    ds2 = study(1, size=32)[0]
    del ds2.SeriesInstanceUID
    assert send(node.settings.port, [ds2]) == [DATASET_DOES_NOT_MATCH]
    assert _instances(node) == []


@pytest.mark.every_backend
def test_an_instance_number_outside_the_is_range_is_stored_without_it(scp_factory):
    """PS3.5 bounds IS to 32 bits; eleven digits fit its 12 characters but not PostgreSQL's
    integer column (the slice was answered 0xA700, so a sender retried it for ever)."""
    node = scp_factory()
    slices = study(2, size=32)
    slices[0].InstanceNumber = "99999999999"
    slices[1].InstanceNumber = "-2147483648"
    assert send(node.settings.port, slices) == [SUCCESS, SUCCESS]
    with node.sessions() as session:
        rows = session.execute(select(Instance.sop_instance_uid, Instance.instance_number))
        numbers = {uid: number for uid, number in rows}
    assert numbers == {slices[0].SOPInstanceUID: None, slices[1].SOPInstanceUID: -(2**31)}


@pytest.mark.every_backend
def test_a_nul_inside_a_text_value_is_stored_as_a_replacement_character(scp_factory):
    """No text VR allows NUL (only a UID's padding), and PostgreSQL refuses it in text: the
    slice was answered 0xA700 and resent for ever. The row now holds U+FFFD there."""
    node = scp_factory()
    ds = study(1, size=32)[0]
    for keyword, vr, raw in (
        ("PatientName", "PN", b"AB\x00CD"),
        ("SeriesDescription", "LO", b"HEAD\x00X"),
        ("StudyDate", "DA", b"2020\x000101"),
    ):
        tag = Tag(tag_for_keyword(keyword))
        ds[tag] = RawDataElement(tag, vr, len(raw), raw, 0, False, True)
    assert send(node.settings.port, [ds]) == [SUCCESS]
    with node.sessions() as session:
        study_row = session.scalars(select(Study)).one()
        series = session.scalars(select(Series)).one()
    assert (
        study_row.patient_name == "AB\ufffdCD" and study_row.study_date == "2020\ufffd010"
    )  # DA: 8 characters
    assert series.series_description == "HEAD\ufffdX"


def test_ct_without_pixel_data_is_refused(scp_factory):
    node = scp_factory()
    ds = study(1, size=32)[0]
    del ds.PixelData
    assert send(node.settings.port, [ds]) == [DATASET_DOES_NOT_MATCH]
    assert _instances(node) == []
    # A Pixel Data element that is present but empty (found by test_hostile_property).
    empty = study(1, size=32)[0]
    empty.PixelData = b""
    assert send(node.settings.port, [empty]) == [DATASET_DOES_NOT_MATCH]
    assert _instances(node) == []


def test_undecodable_pixels_are_stored_then_failed_with_a_reason(node_factory):
    node = node_factory()
    ds = pydicom.dcmread(sample_file("693_J2KR.dcm"))
    ds.PixelData = ds.PixelData[:300] + b"\x00" * 100
    assert send(node.settings.port, [ds]) == [SUCCESS]
    inst = wait_for(lambda: [i for i in _instances(node) if i.status == InstanceStatus.FAILED])[0]
    assert "JPEG 2000" in inst.reason
    wait_for(lambda: _resulted(node, ds.StudyInstanceUID))


def test_non_ct_object_is_accepted_and_recorded_as_skipped_without_a_file(scp_factory):
    node = scp_factory()
    mr = pydicom.dcmread(sample_file("MR_small.dcm"))
    assert send(node.settings.port, [mr]) == [SUCCESS]
    (inst,) = _instances(node)
    assert inst.status == InstanceStatus.SKIPPED and "not a CT image" in inst.reason
    assert inst.path is None


def test_non_ct_object_is_refused_when_configured(scp_factory):
    node = scp_factory(accept_other_objects=False)
    from pynetdicom import AE

    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.4")  # MR Image Storage
    assoc = ae.associate("127.0.0.1", node.settings.port, ae_title="ICHNODE")
    # Nothing to negotiate: the association is rejected or has no accepted context.
    assert not assoc.is_established or not assoc.accepted_contexts
    if assoc.is_established:
        assoc.release()


def test_undecodable_dataset_is_cannot_understand(scp_factory):
    node = scp_factory()
    ds = study(1, size=32)[0]
    # A data set that is one element with an unknown VR, sent at the DIMSE level because
    # pynetdicom's SCU (rightly) refuses to encode such a thing.
    payload = b"\x08\x00\x18\x00ZZ\x04\x001.2\x00"
    assert send_raw(node.settings.port, payload, ds.SOPClassUID, ds.SOPInstanceUID) == (
        CANNOT_UNDERSTAND
    )
    assert _instances(node) == []
    assert echo(node.settings.port) == SUCCESS


def test_truncated_native_pixel_data_is_refused(scp_factory):
    node = scp_factory()
    ds = study(1, size=32)[0]
    ds.PixelData = ds.PixelData[:-100]
    assert send(node.settings.port, [ds]) == [DATASET_DOES_NOT_MATCH]
    assert _instances(node) == []


def test_hu_and_pixels_survive_storage(scp_factory):
    node = scp_factory()
    pixels = (np.arange(64 * 64).reshape(64, 64) % 2000).astype(np.uint16)
    ds = ct_dataset(pixels, StudyInstanceUID=generate_uid())
    assert send(node.settings.port, [ds]) == [SUCCESS]
    (inst,) = wait_for(lambda: _instances(node))
    assert np.array_equal(pydicom.dcmread(node.store.path(inst.path)).pixel_array, pixels)
