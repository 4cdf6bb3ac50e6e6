"""Reviews over the HTTP API: added as rows (a new one supersedes, none is overwritten), read
back, refused with a clear status when they do not fit the study; the worklist shows and
filters on them; ``/metrics`` carries the agreement.

Real parts: the phantoms a real node received over DICOM and resulted (``seeded``), uvicorn
on a free port, httpx as the client.
"""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from web_fixtures import TOKEN

from ichnode.db.models import Review


@pytest.fixture
def served(seeded, web):
    handle = web(seeded)
    with httpx.Client(base_url=handle.url, timeout=30) as client:
        yield seeded, seeded.uids, client


def _detail(client: httpx.Client, uid: str) -> dict:
    return client.get(f"/api/studies/{uid}").json()


def test_a_review_is_added_and_read_back_with_the_version_and_model_it_reviewed(served):
    _, uids, client = served
    uid = uids["iph"]
    study = _detail(client, uid)
    first_slice = study["instances"][0]["sop_instance_uid"]
    response = client.post(
        f"/api/studies/{uid}/reviews",
        json={
            "verdict": "confirmed",
            "subtypes": ["intraparenchymal"],
            "slices": [first_slice],
            "reviewer": "Dr Grey",
            "note": "large left bleed",
        },
    )
    assert response.status_code == 201, response.text
    made = response.json()
    assert made["verdict"] == "confirmed"
    assert made["subtypes"] == ["intraparenchymal"]
    assert made["slices"] == [first_slice]
    assert made["reviewer"] == "Dr Grey"
    assert made["version"] == study["version"]
    assert made["model_id"] == study["model_id"]
    listed = client.get(f"/api/studies/{uid}/reviews").json()
    assert listed["reviews"] == [made]


def test_a_new_review_supersedes_and_the_old_one_stays(served):
    site, uids, client = served
    uid = uids["normal"]
    url = f"/api/studies/{uid}/reviews"
    assert client.post(url, json={"verdict": "confirmed"}).status_code == 201
    assert client.post(url, json={"verdict": "missed", "subtypes": ["subdural"]}).status_code == 201
    reviews = client.get(url).json()["reviews"]
    assert [r["verdict"] for r in reviews] == ["confirmed", "missed"]
    assert reviews[0]["subtypes"] is None  # not edited by the later review
    with site.sessions() as session:
        assert session.query(Review).count() == 2


def test_the_reviewer_is_the_tokens_label_when_none_is_typed(seeded, web):
    handle = web(seeded, token=TOKEN)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    url = f"{handle.url}/api/studies/{seeded.uids['edh']}/reviews"
    assert httpx.post(url, json={"verdict": "rejected"}).status_code == 401
    made = httpx.post(url, json={"verdict": "rejected"}, headers=headers).json()
    assert made["reviewer"] == "token"


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"verdict": "maybe"}, 422, "verdict"),
        ({"verdict": "missed", "subtypes": ["chronic"]}, 400, "unknown subtype 'chronic'"),
        ({"verdict": "missed", "slices": ["1.2.3.4"]}, 400, "not an instance of this study"),
        ({"verdict": "confirmed", "version": 7}, 409, "no result version 7"),
        ({"verdict": "confirmed", "note": "ok\x00"}, 422, "must not contain NUL"),
        ({"verdict": "confirmed", "reviewer": "\x00"}, 422, "must not contain NUL"),
    ],
)
def test_a_review_that_does_not_fit_the_study_is_refused(served, body, status, words):
    site, uids, client = served
    response = client.post(f"/api/studies/{uids['iph']}/reviews", json=body)
    assert response.status_code == status
    assert words in response.text
    with site.sessions() as session:
        assert session.query(Review).count() == 0


def test_reviews_of_an_unknown_study_are_404(served):
    _, _, client = served
    assert client.get("/api/studies/1.2.3/reviews").status_code == 404
    assert (
        client.post("/api/studies/1.2.3/reviews", json={"verdict": "confirmed"}).status_code == 404
    )


def test_metrics_carry_the_agreement_with_the_reviews(served):
    _, uids, client = served
    model_id = _detail(client, uids["iph"])["model_id"]
    flagged = {u: _detail(client, u)["flagged"] for u in uids.values()}
    for uid in uids.values():  # every flagged result a false alarm, every other one right
        verdict = "rejected" if flagged[uid] else "confirmed"
        assert client.post(f"/api/studies/{uid}/reviews", json={"verdict": verdict}).is_success
    families = {f.name: f for f in text_string_to_metric_families(client.get("/metrics").text)}
    samples = families["ichnode_review_flagged_studies"].samples
    rejected = [s for s in samples if s.labels["verdict"] == "rejected"]
    assert [s.labels["model_id"] for s in rejected] == [model_id]
    assert rejected[0].value == sum(flagged.values())
    [specificity] = families["ichnode_review_specificity"].samples
    n_flagged = sum(flagged.values())
    assert specificity.value == (len(uids) - n_flagged) / len(uids)
    assert (
        "ichnode_review_sensitivity" not in families
        or not families["ichnode_review_sensitivity"].samples
    )  # no reviewed study had a hemorrhage


def test_the_worklist_shows_the_verdict_and_filters_on_reviewed(served):
    _, uids, client = served
    url = f"/api/studies/{uids['edh']}/reviews"
    assert client.post(url, json={"verdict": "missed", "subtypes": ["epidural"]}).is_success
    rows = {
        s["study_instance_uid"]: s["review"] for s in client.get("/api/studies").json()["studies"]
    }
    assert rows == {uids["iph"]: None, uids["edh"]: "missed", uids["normal"]: None}
    done = client.get("/api/studies", params={"reviewed": "true"}).json()
    assert [s["study_instance_uid"] for s in done["studies"]] == [uids["edh"]]
    assert done["total"] == 1
    todo = client.get("/api/studies", params={"reviewed": "false"}).json()
    assert {s["study_instance_uid"] for s in todo["studies"]} == {uids["iph"], uids["normal"]}
    detail = _detail(client, uids["edh"])
    assert detail["review"] == "missed"
    assert [r["verdict"] for r in detail["reviews"]] == ["missed"]


def test_an_unsupported_method_is_answered_with_both_methods_allowed(served):
    _, uids, client = served
    response = client.request("DELETE", f"/api/studies/{uids['iph']}/reviews")
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, POST"
