"""The HTTP API over phantom studies a real node received over DICOM and resulted.

Real parts only: the studies are sent with a pynetdicom SCU to an in-process node once per
session (``seeded``: each test reads its own copy of that database and store, served with the
demo model injected), uvicorn on a free port and httpx as the client. Tests of the node's own
threads and of headers sent on purpose start a node (``node_factory``).
"""

from __future__ import annotations

import dataclasses
import io
import shutil
import socket
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import httpx
import numpy as np
import pytest
from helpers import HOSTILE_PYDICOM_WARNINGS, project_version
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from web_fixtures import (
    N_SLICES,
    SIZE,
    TOKEN,
    send_with,
    serve,
    triage_key,
    wait_resulted,
)

from ichnode.config import HTTPSettings, load_settings
from ichnode.db.models import DeliveryStatus, OutboxEntry, ReportObject, Study, StudyResult
from ichnode.errors import ConfigError
from ichnode.subtypes import SUBTYPES
from ichnode.web import check_http_settings, start_http


@pytest.fixture
def served(seeded, web):
    """The resulted phantoms served over HTTP, and a client: (site, uids, client)."""
    handle = web(seeded)
    with httpx.Client(base_url=handle.url, timeout=30) as client:
        yield seeded, seeded.uids, client


@pytest.fixture
def bare(node_factory):
    """A node without studies and its HTTP server: (node, handle)."""
    node = node_factory()
    handle = serve(node)
    yield node, handle
    handle.stop()


def test_studies_come_flagged_first_then_by_any_then_newest(served):
    _, uids, client = served
    body = client.get("/api/studies").json()
    studies = body["studies"]
    assert body["total"] == 3 and body["order"] == "triage"
    assert {s["study_instance_uid"] for s in studies} == set(uids.values())
    assert studies == sorted(studies, key=triage_key)
    assert studies[0]["study_instance_uid"] == uids["iph"]
    assert studies[0]["flagged"] is True and "intraparenchymal" in studies[0]["flagged_subtypes"]
    newest = client.get("/api/studies", params={"order": "newest"}).json()["studies"]
    assert [s["study_instance_uid"] for s in newest] == [uids["normal"], uids["edh"], uids["iph"]]


def test_study_list_filters_and_pages(served):
    _, uids, client = served
    full = client.get("/api/studies").json()["studies"]
    page = client.get("/api/studies", params={"limit": 1, "offset": 1}).json()
    assert page["total"] == 3 and page["studies"] == full[1:2]
    flagged = client.get("/api/studies", params={"flagged": "true"}).json()["studies"]
    assert flagged == [s for s in full if s["flagged"]]
    unflagged = client.get("/api/studies", params={"flagged": "false"}).json()["studies"]
    assert unflagged == [s for s in full if not s["flagged"]]
    scored = client.get("/api/studies", params={"status": "scored"}).json()
    assert scored["total"] == 3
    assert client.get("/api/studies", params={"status": "receiving"}).json()["total"] == 0
    future = (datetime.now(timezone.utc) + timedelta(hours=1)).isoformat()
    assert client.get("/api/studies", params={"since": future}).json()["total"] == 0
    past = (datetime.now(timezone.utc) - timedelta(hours=1)).isoformat()
    assert client.get("/api/studies", params={"since": past}).json()["total"] == 3
    accession = full[0]["patient"]["accession_number"]
    by_accession = client.get("/api/studies", params={"accession": accession}).json()
    assert by_accession["studies"] == [
        s for s in full if s["patient"]["accession_number"] == accession
    ]
    assert by_accession["total"] >= 1
    assert client.get("/api/studies", params={"accession": "NO-SUCH"}).json()["total"] == 0
    assert client.get("/api/studies", params={"accession": "A\x00"}).status_code == 422


def test_study_detail_has_series_instances_by_z_and_versions(served):
    _, uids, client = served
    detail = client.get(f"/api/studies/{uids['iph']}").json()
    assert detail["study_instance_uid"] == uids["iph"]
    assert len(detail["series"]) == 1 and detail["series"][0]["n_instances"] == N_SLICES
    zs = [i["z"] for i in detail["instances"]]
    assert len(zs) == N_SLICES and zs == sorted(zs)
    for inst in detail["instances"]:
        assert inst["status"] == "done" and set(inst["probabilities"]) == set(SUBTYPES)
    assert [v["version"] for v in detail["versions"]] == [1]
    assert detail["deliveries"] == []
    assert detail["state"] == "scored"
    assert detail["patient"]["patient_name"]


def test_delivery_outcomes_set_the_worklist_state(served):
    node, uids, client = served
    with node.sessions.begin() as session:
        for name, statuses in (
            ("iph", [DeliveryStatus.SENT, DeliveryStatus.SENT]),
            ("edh", [DeliveryStatus.SENT, DeliveryStatus.FAILED]),
        ):
            study = session.query(Study).filter_by(study_instance_uid=uids[name]).one()
            result = session.query(StudyResult).filter_by(study_id=study.id, version=1).one()
            for i, status in enumerate(statuses):
                kind = ("sr", "summary")[i]
                obj = ReportObject(
                    study_result_id=result.id,
                    kind=kind,
                    sop_class_uid="1.2.840.10008.5.1.4.1.1.7",
                    series_instance_uid=f"1.2.3.{i}",
                    sop_instance_uid=f"1.2.3.{i}.{result.id}",
                    path=f"reports/{result.id}/{i}.dcm",
                )
                session.add(
                    OutboxEntry(
                        report_object=obj,
                        destination="pacs",
                        ae_title="PACS",
                        host="127.0.0.1",
                        port=104,
                        status=status,
                        attempts=1,
                        last_error="association rejected" if status == "failed" else None,
                    )
                )
    states = {
        s["study_instance_uid"]: s["state"] for s in client.get("/api/studies").json()["studies"]
    }
    assert states == {
        uids["iph"]: "reported",
        uids["edh"]: "delivery_failed",
        uids["normal"]: "scored",
    }
    failed = client.get("/api/studies", params={"status": "delivery_failed"}).json()["studies"]
    assert [s["study_instance_uid"] for s in failed] == [uids["edh"]]
    deliveries = client.get(f"/api/studies/{uids['edh']}").json()["deliveries"]
    assert sorted(d["status"] for d in deliveries) == ["failed", "sent"]


def test_instance_image_is_a_png_in_every_window(served, tmp_path):
    _, uids, client = served
    sop = client.get(f"/api/studies/{uids['iph']}").json()["key_sop_instance_uid"]
    images = {}
    for window in ("brain", "subdural", "soft", "bone"):
        response = client.get(f"/api/instances/{sop}/image.png", params={"window": window})
        assert response.status_code == 200 and response.headers["content-type"] == "image/png"
        (tmp_path / f"{window}.png").write_bytes(response.content)
        images[window] = np.asarray(Image.open(tmp_path / f"{window}.png"))
        assert images[window].shape == (SIZE, SIZE, 3) and images[window].std() > 5
    assert not np.array_equal(images["brain"], images["bone"])
    thumb = client.get(f"/api/instances/{sop}/image.png", params={"size": 64})
    (tmp_path / "thumb.png").write_bytes(thumb.content)
    assert Image.open(tmp_path / "thumb.png").size == (64, 64)


def test_a_free_window_is_rendered_from_the_stored_hu(served, tmp_path):
    _, uids, client = served
    sop = client.get(f"/api/studies/{uids['iph']}").json()["key_sop_instance_uid"]
    url = f"/api/instances/{sop}/image.png"

    def image(**params: object) -> np.ndarray:
        response = client.get(url, params=params)
        assert response.status_code == 200, response.text
        return np.asarray(Image.open(io.BytesIO(response.content))).astype(int)

    # centre 40 / width 80 is the brain preset, pixel for pixel; a narrow one is not.
    assert np.array_equal(image(center=40, width=80), image(window="brain"))
    narrow = image(center=35, width=20, letters="false")
    assert not np.array_equal(narrow, image(window="brain", letters="false"))
    assert len(np.unique(narrow[..., 0])) > 20  # many grey levels, not a stretched 8-bit one
    # One of the two overrides the named window's: centre 80 of the subdural window's 200.
    assert np.array_equal(image(window="brain", center=80, width=200), image(window="subdural"))
    assert np.array_equal(image(window="subdural", center=80), image(window="subdural"))
    assert client.get(url, params={"center": 40, "width": 0}).status_code == 422


def test_instance_orientation_names_the_edges(served):
    _, uids, client = served
    sop = client.get(f"/api/studies/{uids['iph']}").json()["key_sop_instance_uid"]
    response = client.get(f"/api/instances/{sop}/orientation")
    assert response.status_code == 200
    assert response.json() == {"left": "R", "right": "L", "top": "A", "bottom": "P"}
    assert client.get("/api/instances/1.2.3.4/orientation").status_code == 404


def test_saliency_overlay_colours_the_key_slice(served, tmp_path):
    _, uids, client = served
    sop = client.get(f"/api/studies/{uids['iph']}").json()["key_sop_instance_uid"]
    url = f"/api/instances/{sop}/image.png"
    plain = client.get(url).content
    overlay = client.get(url, params={"overlay": "saliency", "subtype": "intraparenchymal"})
    assert overlay.status_code == 200
    (tmp_path / "p.png").write_bytes(plain)
    (tmp_path / "o.png").write_bytes(overlay.content)
    p = np.asarray(Image.open(tmp_path / "p.png")).astype(int)
    o = np.asarray(Image.open(tmp_path / "o.png")).astype(int)
    # The plain image is grey; the heat map adds colour where the model looked.
    assert np.abs(p[..., 0] - p[..., 2]).max() == 0
    assert np.abs(o[..., 0] - o[..., 2]).max() > 50


def test_unknown_study_and_instance_are_404(empty, web):
    handle = web(empty)
    with httpx.Client(base_url=handle.url) as client:
        assert client.get("/api/studies/1.2.3.4").status_code == 404
        assert client.get("/api/studies/not-a-uid").status_code == 404
        assert client.get("/api/instances/1.2.3.4/image.png").status_code == 404
        assert client.get("/api/instances/1.2/image.png?window=lung").status_code == 422


def test_healthz_is_ok_with_queue_depth(bare):
    _, handle = bare
    body = httpx.get(f"{handle.url}/healthz").json()
    assert body["status"] == "ok" and body["queue_depth"] == 0
    assert body["database"]["ok"] and body["store"]["ok"] and body["workers"]["ok"]
    assert body["threads"]["worker-1"] is True


def test_healthz_is_503_when_the_store_is_gone(empty, web):
    handle = web(empty)
    shutil.rmtree(empty.store.root)
    response = httpx.get(f"{handle.url}/healthz")
    assert response.status_code == 503
    assert response.json()["store"]["ok"] is False and response.json()["database"]["ok"]


def test_healthz_is_503_when_the_workers_stopped(bare):
    node, handle = bare
    node.stop()  # every thread ends (and is joined)
    response = httpx.get(f"{handle.url}/healthz")
    assert response.status_code == 503
    assert response.json()["workers"]["ok"] is False
    assert response.json()["threads"]["worker-1"] is False


def _samples(text: str) -> dict[tuple, float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metrics_count_instances_results_and_latency(served):
    _, uids, client = served
    response = client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    m = _samples(response.text)
    n = N_SLICES * len(uids)
    assert m[("ichnode_instances_received_total", ())] == n
    assert m[("ichnode_instances_total", (("outcome", "scored"),))] == n
    assert m[("ichnode_instances_total", (("outcome", "failed"),))] == 0
    assert m[("ichnode_queue_depth", (("status", "queued"),))] == 0
    assert m[("ichnode_inference_latency_seconds_count", ())] == n
    assert m[("ichnode_inference_latency_seconds_bucket", (("le", "+Inf"),))] == n
    assert 0 < m[("ichnode_inference_latency_seconds_sum", ())] < 60 * n
    results = sum(m[("ichnode_study_results_total", (("flagged", f),))] for f in ("true", "false"))
    assert results == len(uids)
    assert m[("ichnode_deliveries_total", (("status", "sent"),))] == 0


def test_patient_identifiers_are_hidden_when_the_setting_is_off(seeded, web):
    handle = web(seeded, show_patient_identifiers=False)
    with httpx.Client(base_url=handle.url) as client:
        studies = wait_resulted(client, 3)
        assert [s["patient"] for s in studies] == [None] * 3
        assert client.get(f"/api/studies/{seeded.uids['iph']}").json()["patient"] is None
        assert client.get("/api/info").json()["show_patient_identifiers"] is False
        # Nor can they be searched for.
        assert client.get("/api/studies", params={"accession": "X"}).status_code == 400


@pytest.mark.filterwarnings(*HOSTILE_PYDICOM_WARNINGS)  # the overlong age, sent on purpose
def test_patient_age_sex_and_study_time_are_shown_only_with_the_identifiers(node_factory):
    node = node_factory()
    full = send_with(node, 21, PatientSex="F", PatientAge="054Y", StudyTime="143205.25")
    odd = send_with(node, 22, PatientSex=None, PatientAge="54 years, 3 months", StudyTime="0930")
    shown = serve(node)
    try:
        with httpx.Client(base_url=shown.url) as client:
            studies = {s["study_instance_uid"]: s for s in wait_resulted(client, 2)}
            patient = studies[full]["patient"]
            assert (patient["patient_sex"], patient["patient_age"]) == ("F", "054Y")
            assert patient["study_time"] == "143205.25"
            assert client.get(f"/api/studies/{full}").json()["patient"] == patient
            patient = studies[odd]["patient"]
            assert patient["patient_sex"] is None and patient["study_time"] == "0930"
            assert patient["patient_age"] == "54 years, 3 months"[:16]  # clipped to its column
    finally:
        shown.stop()
    hidden = serve(node, show_patient_identifiers=False)
    try:
        with httpx.Client(base_url=hidden.url) as client:
            listed = client.get("/api/studies")
            assert [s["patient"] for s in listed.json()["studies"]] == [None, None]
            assert client.get(f"/api/studies/{full}").json()["patient"] is None
            assert "054Y" not in listed.text and "143205" not in listed.text
    finally:
        hidden.stop()


def test_token_is_required_everywhere_but_healthz(empty, web):
    handle = web(empty, token=TOKEN)
    with httpx.Client(base_url=handle.url) as client:
        assert client.get("/healthz").status_code == 200
        for path in ("/", "/api/studies", "/metrics", "/openapi.json", "/static/app.css"):
            response = client.get(path)
            assert response.status_code == 401, path
            assert response.headers["www-authenticate"] == "Bearer"
        wrong = {"Authorization": "Bearer nope"}
        assert client.get("/api/studies", headers=wrong).status_code == 401
        right = {"Authorization": f"Bearer {TOKEN}"}
        assert client.get("/api/studies", headers=right).status_code == 200
        assert client.get("/metrics", headers=right).status_code == 200


def test_query_token_sets_a_cookie_and_drops_the_token_from_the_url(empty, web):
    handle = web(empty, token=TOKEN)
    with httpx.Client(base_url=handle.url) as client:
        assert client.get("/?token=wrong").status_code == 401
        response = client.get("/", params={"token": TOKEN, "x": "1"})
        assert response.status_code == 303 and response.headers["location"] == "/?x=1"
        assert "httponly" in response.headers["set-cookie"].lower()
        assert client.get("/").status_code == 200  # the cookie now authenticates
        assert client.get("/api/studies").status_code == 200


def _http(bind: str, token: str | None = None, **extra: object) -> SimpleNamespace:
    return SimpleNamespace(http=HTTPSettings(bind=bind, token=token, **extra))


def test_refuses_a_non_loopback_bind_without_a_token():
    with pytest.raises(ConfigError, match="without a token"):
        check_http_settings(_http("0.0.0.0:8080"))
    assert check_http_settings(_http("0.0.0.0:8080", token=TOKEN)) == ("0.0.0.0", 8080)
    allowed = _http("0.0.0.0:8080", allow_remote_without_token=True)
    assert check_http_settings(allowed) == ("0.0.0.0", 8080)
    assert check_http_settings(_http("[::1]:9000")) == ("::1", 9000)
    assert check_http_settings(_http("localhost:9000")) == ("localhost", 9000)


def test_a_bad_or_busy_bind_is_a_config_error(empty, tmp_path):
    config = tmp_path / "bad-bind.toml"
    config.write_text('[http]\nbind = "127.0.0.1"\n')
    with pytest.raises(ConfigError, match=r"^invalid setting http\.bind: expected HOST:PORT"):
        load_settings(config)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = _http(f"127.0.0.1:{port}")
        with pytest.raises(ConfigError, match="cannot listen"):
            start_http(settings, dataclasses.replace(empty.context, settings=settings))


def test_info_and_metrics_name_the_version_and_the_model(empty, web):
    node, handle = empty, web(empty)
    with httpx.Client(base_url=handle.url) as client:
        info = client.get("/api/info").json()
        samples = _samples(client.get("/metrics").text)
    version = project_version()
    model_id = node.predictor.model_id
    assert info["version"] == version and info["model_id"] == model_id
    labels = (("model_id", model_id), ("version", version))
    assert samples[("ichnode_build_info", labels)] == 1
