"""Results back into a real PACS: Orthanc sends a study to ichnode and gets the reports back.

One Orthanc (``tests/orthanc.py``) serves the module, with ichnode's AE at a fixed port that
each test's node listens on; the test of a PACS that is down starts its own. The main test
runs on both database backends; the others run on SQLite to stay quick (test_outbox*.py
cover the outbox on both).
"""

from __future__ import annotations

import subprocess
import sys
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from delivery_fixtures import all_sent, bleed_study, dciodvfy_errors, latest_result, rows
from dicom_client import send
from helpers import free_port, wait_for
from orthanc import ORTHANC_AE, Orthanc, StoreSCP
from typer.testing import CliRunner

from ichnode.cli import app
from ichnode.report.sr import finding_concept
from ichnode.subtypes import SUBTYPES

SQLITE_ONLY = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
#: The node's AE title as Orthanc knows it (DicomModalities key and AE).
ICHNODE = "ichnode"
FINDING = "121071"  # (121071, DCM, "Finding")
PRESENT = "52101004"  # (52101004, SCT, "Present")


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    """A running Orthanc whose modality ``ichnode`` is ICHNODE@127.0.0.1:<pacs.ichnode_port>."""
    port = free_port()
    orthanc = Orthanc(tmp_path_factory.mktemp("orthanc"), {ICHNODE: ("ICHNODE", "127.0.0.1", port)})
    orthanc.ichnode_port = port
    with orthanc:
        yield orthanc


def orthanc_destination(orthanc: Orthanc, objects: list[str] | None = None) -> dict:
    return {
        "name": "orthanc",
        "ae_title": ORTHANC_AE,
        "host": "127.0.0.1",
        "port": orthanc.dicom_port,
        "objects": objects or ["sr", "summary"],
    }


def upload(orthanc: Orthanc, datasets: list[pydicom.Dataset]) -> str:
    for ds in datasets:
        buf = BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        orthanc.upload(buf.getvalue())
    return str(datasets[0].StudyInstanceUID)


def arrived(orthanc: Orthanc, study_uid: str, sop_uids: set[str]):  # noqa: ANN201
    """Orthanc's instances of the study with these SOP Instance UIDs, once all are there."""
    found = [i for i in orthanc.instances(study_uid) if i["SOPInstanceUID"] in sop_uids]
    return found if len(found) == len(sop_uids) else None


def sr_findings(sr: pydicom.Dataset) -> dict[str, tuple[float, bool]]:
    """``{subtype: (probability, present)}`` read from the SR's measurement groups."""
    by_code = {finding_concept(s).value: s for s in SUBTYPES}
    out: dict[str, tuple[float, bool]] = {}

    def walk(items) -> None:  # noqa: ANN001
        for item in items:
            group = item.get("ContentSequence")
            if not group:
                continue
            finding = next(
                (i for i in group if i.ConceptNameCodeSequence[0].CodeValue == FINDING), None
            )
            num = next((i for i in group if i.ValueType == "NUM"), None)
            if finding is not None and num is not None:
                name = by_code[finding.ConceptCodeSequence[0].CodeValue]
                call = next(
                    i
                    for i in group
                    if i.ValueType == "CODE"
                    and i.ConceptNameCodeSequence[0].CodeValue
                    == finding.ConceptCodeSequence[0].CodeValue
                )
                present = call.ConceptCodeSequence[0].CodeValue == PRESENT
                out[name] = (float(num.MeasuredValueSequence[0].NumericValue), present)
            walk(group)

    walk(sr.ContentSequence)
    return out


@pytest.mark.slow
def test_orthanc_study_comes_back_with_sr_and_summary_matching_the_result(
    pacs, node_factory, tmp_path
):
    datasets = bleed_study(seed=11, n_slices=16, size=512)
    study_uid = upload(pacs, datasets)
    with StoreSCP(tmp_path / "received") as scp:
        second = {"name": "storescp", "ae_title": scp.ae_title, "host": "127.0.0.1",
                  "port": scp.port, "objects": ["sr", "summary"]}  # fmt: skip
        node = node_factory(
            port=pacs.ichnode_port, destinations=[orthanc_destination(pacs), second]
        )
        pacs.send_study(ICHNODE, study_uid)
        sent = wait_for(lambda: all_sent(node, count=4), timeout=90)
        wait_for(lambda: len(scp.files()) == 2, timeout=10)
        received_by_scp = set(scp.received())
    by_kind = {r.kind: r.sop_instance_uid for r in sent if r.destination == "orthanc"}
    assert set(by_kind) == {"sr", "summary"}
    assert received_by_scp == set(by_kind.values())  # both destinations got the same objects
    reports = wait_for(lambda: arrived(pacs, study_uid, set(by_kind.values())), timeout=30)
    by_uid = {i["SOPInstanceUID"]: i for i in reports}
    sr_info, summary_info = by_uid[by_kind["sr"]], by_uid[by_kind["summary"]]
    assert sr_info["Modality"] == "SR" and summary_info["Modality"] in ("OT", "SC")
    ct_series = {str(ds.SeriesInstanceUID) for ds in datasets}
    assert sr_info["SeriesInstanceUID"] != summary_info["SeriesInstanceUID"]
    assert not {sr_info["SeriesInstanceUID"], summary_info["SeriesInstanceUID"]} & ct_series
    assert {sr_info["StudyInstanceUID"], summary_info["StudyInstanceUID"]} == {study_uid}

    sr = pydicom.dcmread(BytesIO(pacs.file(sr_info["ID"])))
    result = latest_result(node)
    findings = sr_findings(sr)
    assert set(findings) == set(SUBTYPES)
    for name in SUBTYPES:
        assert findings[name][0] == pytest.approx(result.probabilities[name], abs=1e-6)
    flagged = {name for name, (_, present) in findings.items() if present}
    assert flagged == set(result.flagged_subtype_list)
    for info in (sr_info, summary_info):  # the objects as the PACS holds them
        path = tmp_path / f"{info['ID']}.dcm"
        path.write_bytes(pacs.file(info["ID"]))
        assert dciodvfy_errors(path) == [], info["Modality"]


@SQLITE_ONLY
def test_results_return_to_the_sending_pacs(pacs, node_factory):
    datasets = bleed_study(seed=12, n_slices=4, size=128)
    study_uid = upload(pacs, datasets)
    node = node_factory(port=pacs.ichnode_port, return_to_sender={ORTHANC_AE: pacs.dicom_port})
    pacs.send_study(ICHNODE, study_uid)
    sent = wait_for(lambda: all_sent(node, count=2), timeout=60)
    assert {r.destination for r in sent} == {f"return:{ORTHANC_AE}"}
    wait_for(lambda: arrived(pacs, study_uid, {r.sop_instance_uid for r in sent}), timeout=30)


@pytest.mark.slow
@SQLITE_ONLY
def test_pacs_down_at_result_time_gets_the_objects_when_it_comes_up(node_factory, tmp_path):
    pacs_port = free_port()
    late = Orthanc(tmp_path / "late-orthanc", dicom_port=pacs_port)
    node = node_factory(
        destinations=[orthanc_destination(late)],
        delivery_backoff_seconds=0.3,
        delivery_max_attempts=100,
    )
    datasets = bleed_study(seed=13, n_slices=4, size=128)
    send(node.settings.port, datasets)
    wait_for(lambda: len(rows(node)) == 2 and all(r.attempts >= 1 for r in rows(node)), 60)
    assert all(r.status == "pending" and "no association" in r.last_error for r in rows(node))
    with late:
        sent = wait_for(lambda: all_sent(node, count=2), timeout=30)
        study_uid = str(datasets[0].StudyInstanceUID)
        uids = {r.sop_instance_uid for r in sent}
        wait_for(lambda: arrived(late, study_uid, uids), timeout=10)
    assert {r.kind for r in sent} == {"sr", "summary"}


@SQLITE_ONLY
def test_resend_puts_a_deleted_sr_back_into_the_pacs(pacs, node_factory, tmp_path, db_url):
    datasets = bleed_study(seed=14, n_slices=4, size=128)
    node = node_factory(port=pacs.ichnode_port, destinations=[orthanc_destination(pacs, ["sr"])])
    send(node.settings.port, datasets)
    [sent] = wait_for(lambda: all_sent(node, count=1), timeout=60)
    study_uid = str(datasets[0].StudyInstanceUID)
    [sr] = wait_for(lambda: pacs.instances(study_uid), timeout=10)
    pacs.delete_instance(sr["ID"])
    assert pacs.instances(study_uid) == []
    done = CliRunner().invoke(
        app,
        ["resend", "--study", study_uid, "--db-url", db_url, "--store", str(tmp_path / "store")],
    )
    assert done.exit_code == 0, done.output
    [back] = wait_for(lambda: pacs.instances(study_uid), timeout=10)
    assert back["SOPInstanceUID"] == sent.sop_instance_uid


def _config(tmp_path: Path, destinations: list[dict]) -> Path:
    lines = []
    for d in destinations:
        lines += ["[[destinations]]"] + [f"{k} = {d[k]!r}" for k in ("name", "ae_title", "host")]
        lines.append(f"port = {d['port']}")
    path = tmp_path / "ichnode.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_destinations_check_exits_1_and_names_the_one_that_is_down(pacs, tmp_path):
    down = {"name": "nowhere", "ae_title": "NOBODY", "host": "127.0.0.1", "port": free_port()}
    config = _config(tmp_path, [orthanc_destination(pacs), down])
    done = subprocess.run(
        [sys.executable, "-m", "ichnode", "destinations", "check", "--config", str(config)],
        capture_output=True, text=True, timeout=60, env={"COLUMNS": "200", "PATH": "/usr/bin"},
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    lines = done.stdout.splitlines()
    orthanc_line = next(line for line in lines if "orthanc" in line)
    assert ORTHANC_AE in orthanc_line and f"127.0.0.1:{pacs.dicom_port}" in orthanc_line
    assert "OK" in orthanc_line and " ms" in orthanc_line
    down_line = next(line for line in lines if "nowhere" in line)
    assert "no association" in down_line


def test_destinations_check_exits_0_when_every_destination_answers(pacs, tmp_path):
    config = _config(tmp_path, [orthanc_destination(pacs)])
    done = CliRunner().invoke(app, ["destinations", "check", "--config", str(config)])
    assert done.exit_code == 0, done.output
    assert "orthanc" in done.output and "OK" in done.output
