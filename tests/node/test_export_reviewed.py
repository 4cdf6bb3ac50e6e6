"""``ichnode export-reviewed``: the reviewed phantoms (received over DICOM by a real node)
written in the RSNA layout with labels from their reviews, read back by training's own
reader, and de-identified with the PS3.15 basic profile when asked."""

from __future__ import annotations

from pathlib import Path

import pydicom
from typer.testing import CliRunner

from ichnode.cli import app
from ichnode.review import submit
from training.dataset import find_layout, load_labels


def _options(site, tmp_path: Path) -> list[str]:
    """The ``seeded`` fixture's copy: ``tmp_path/db/ichnode.db`` and its store."""
    db = tmp_path / "db" / "ichnode.db"
    return ["--db-url", f"sqlite:///{db}", "--store", str(site.store.root)]


def _no_bleed(site, uid: str) -> str:
    """The verdict that says the study has no hemorrhage, whether the model flagged it or not
    (the demo model flags some normal phantoms)."""
    from ichnode.results import study_detail

    with site.sessions() as session:
        return "rejected" if study_detail(session, uid)["flagged"] else "confirmed"


def _review(site, uid: str, verdict: str, **kwargs) -> None:
    with site.sessions.begin() as session:
        submit(session, uid, verdict, reviewer="dr", **kwargs)


def _slices(site, uid: str) -> list[str]:
    from ichnode.results import study_detail

    with site.sessions() as session:
        return [i["sop_instance_uid"] for i in study_detail(session, uid)["instances"]]


def test_reviewed_studies_are_written_in_the_layout_training_reads(seeded, tmp_path):
    uids = seeded.uids
    marked = _slices(seeded, uids["iph"])[3:5]
    _review(seeded, uids["iph"], "confirmed", subtypes=["intraparenchymal"], slices=marked)
    _review(seeded, uids["normal"], "missed")  # superseded by the next review
    _review(seeded, uids["normal"], _no_bleed(seeded, uids["normal"]))
    _review(seeded, uids["edh"], "missed", subtypes=["epidural"])  # no slice marked: left out
    out = tmp_path / "export"
    done = CliRunner().invoke(
        app, ["export-reviewed", "--out", str(out), *_options(seeded, tmp_path)]
    )
    assert done.exit_code == 0, done.output
    assert "1 studies with a hemorrhage but no marked slice left out" in done.output

    labels = load_labels(find_layout(out).csv)
    n_iph = len(_slices(seeded, uids["iph"]))
    n_normal = len(_slices(seeded, uids["normal"]))
    assert len(labels) == n_iph + n_normal
    positive = labels[labels["any"] == 1]
    assert len(positive) == 2  # the two marked slices
    assert (positive["intraparenchymal"] == 1).all() and (positive["epidural"] == 0).all()
    # each image is a copy of a stored slice, under its ID
    sops = {
        str(pydicom.dcmread(out / "stage_2_train" / f"{i}.dcm").SOPInstanceUID)
        for i in labels.index
    }
    assert set(marked) <= sops and len(sops) == len(labels)


def test_a_second_export_into_the_same_folder_is_refused(seeded, tmp_path):
    _review(seeded, seeded.uids["iph"], _no_bleed(seeded, seeded.uids["iph"]))
    out = tmp_path / "export"
    args = ["export-reviewed", "--out", str(out), *_options(seeded, tmp_path)]
    assert CliRunner().invoke(app, args).exit_code == 0
    again = CliRunner().invoke(app, args)
    assert again.exit_code != 0 and "export into a new folder" in str(again.exception)


def test_deidentify_removes_the_patient_and_replaces_the_uids(seeded, tmp_path):
    uid = seeded.uids["iph"]
    _review(seeded, uid, _no_bleed(seeded, uid))
    out = tmp_path / "export"
    args = ["export-reviewed", "--out", str(out), "--deidentify", *_options(seeded, tmp_path)]
    done = CliRunner().invoke(app, args)
    assert done.exit_code == 0, done.output
    files = sorted((out / "stage_2_train").glob("*.dcm"))
    assert files
    originals = set(_slices(seeded, uid))
    studies = set()
    for path in files:
        ds = pydicom.dcmread(path)
        assert str(ds.get("PatientName", "")) == "" and str(ds.get("PatientID", "")) == ""
        assert str(ds.get("AccessionNumber", "")) == ""
        assert ds.PatientIdentityRemoved == "YES"
        assert ds.SOPInstanceUID not in originals and ds.StudyInstanceUID != uid
        assert not any(sop in path.name for sop in originals)
        studies.add(ds.StudyInstanceUID)
        assert ds.pixel_array.shape == (256, 256)  # the image itself is kept
    assert len(studies) == 1  # the study's UIDs are replaced consistently
