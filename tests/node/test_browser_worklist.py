"""The worklist and study pages in headless Chromium (the system's /usr/bin/chromium).

Driven with Playwright for Python over CDP: it waits on page conditions (no sleeps), evaluates
JavaScript in the page (``naturalWidth``, the SVG) and takes screenshots, with no driver binary
to keep in step with the browser. ``playwright install`` is never needed: the Debian Chromium
is launched by path.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import Browser, Page, sync_playwright
from web_fixtures import (
    PHANTOMS,
    TOKEN,
    send_phantoms,
    send_with,
    serve,
    triage_key,
    wait_resulted,
)

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1440, "height": 900}
TIMEOUT_MS = 20_000


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport=VIEWPORT)
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    context.close()
    assert not errors, f"JavaScript errors: {errors}"


@pytest.fixture
def site(seeded, web):
    """The resulted phantoms served over HTTP: (handle, uids, api order)."""
    handle = web(seeded)
    with httpx.Client(base_url=handle.url) as client:
        studies = wait_resulted(client, len(seeded.uids))
    return handle, seeded.uids, studies


def assert_not_blank(page: Page, path: Path) -> None:
    page.screenshot(path=str(path), full_page=True)
    pixels = np.asarray(Image.open(path).convert("L"), dtype=float)
    assert pixels.std() > 10, f"{path.name} looks blank"


def row_uids(page: Page) -> list[str]:
    return page.eval_on_selector_all("#worklist tbody tr", "rows => rows.map(r => r.dataset.uid)")


@pytest.mark.slow
def test_worklist_lists_studies_in_triage_order_flagged_first(site, page, tmp_path):
    handle, uids, studies = site
    page.goto(handle.url)
    page.wait_for_function("document.querySelectorAll('#worklist tbody tr').length === 3")
    shown = row_uids(page)
    assert shown == [s["study_instance_uid"] for s in sorted(studies, key=triage_key)]
    assert shown[0] == uids["iph"]
    assert "flagged" in page.get_attribute("#worklist tbody tr:first-child", "class")
    assert page.inner_text("#worklist caption").startswith("Studies")
    assert page.locator("#worklist thead th[scope=col]").count() >= 10
    assert_not_blank(page, tmp_path / "worklist.png")


@pytest.mark.slow
def test_clicking_a_study_opens_its_page_with_image_strip_and_z_plot(site, page, tmp_path):
    handle, uids, _ = site
    page.goto(handle.url)
    page.click(f"#worklist tbody tr[data-uid='{uids['iph']}'] td.prob")
    page.wait_for_url(f"**/studies/{uids['iph']}")
    page.wait_for_selector("body[data-loaded=true]")
    page.wait_for_function(
        "(i => i.complete && i.naturalWidth > 0)(document.getElementById('slice'))"
    )
    assert "overlay=saliency" in page.get_attribute("#slice", "src")
    assert page.locator("#zplot polyline").count() == len(PHANTOMS[0][2]) + 5 == 6
    assert page.locator("#strip button.thumb").count() == 8
    page.wait_for_function(
        "[...document.querySelectorAll('#strip img')].every(i => i.complete && i.naturalWidth > 0)"
    )
    assert "FLAGGED" in page.inner_text("#findings")
    # No destination: the version's reports are done with nothing to send.
    assert page.is_hidden("#report-state") and page.is_visible("#no-deliveries")
    assert_not_blank(page, tmp_path / "study.png")
    # Clicking a thumbnail shows that slice.
    page.click("#strip button.thumb >> nth=0")
    assert page.get_attribute("#strip button.thumb >> nth=0", "aria-pressed") == "true"
    assert page.inner_text("#slice-label").startswith("1 /")


@pytest.mark.slow
def test_filter_box_hides_rows_that_do_not_match(site, page):
    handle, uids, studies = site
    page.goto(handle.url)
    page.wait_for_function("document.querySelectorAll('#worklist tbody tr').length === 3")
    name = next(s for s in studies if s["study_instance_uid"] == uids["edh"])["patient"]
    page.fill("#filter", name["patient_name"].split("^")[0].lower())
    visible = page.eval_on_selector_all(
        "#worklist tbody tr", "rows => rows.filter(r => !r.hidden).map(r => r.dataset.uid)"
    )
    assert visible == [uids["edh"]]
    page.fill("#filter", "no such patient anywhere")
    assert page.is_visible("#empty")


@pytest.mark.slow
def test_worklist_refreshes_without_reloading_and_token_link_sets_the_cookie(node_factory, page):
    node = node_factory()
    uids = send_phantoms(node, PHANTOMS[:1])
    handle = serve(node, token=TOKEN)
    try:
        page.goto(f"{handle.url}/?token={TOKEN}")
        assert page.url == f"{handle.url}/"
        page.wait_for_function("document.querySelectorAll('#worklist tbody tr').length === 1")
        page.evaluate("window.__marker = 'same page'")
        more = send_phantoms(node, PHANTOMS[1:2])
        page.wait_for_function(
            "document.querySelectorAll('#worklist tbody tr').length === 2", timeout=30_000
        )
        assert page.evaluate("window.__marker") == "same page"
        assert set(row_uids(page)) == {uids["iph"], more["edh"]}
    finally:
        handle.stop()


# --- layout at laptop widths, flag naming, sorting, announcing --------------------------------

SHORT = {
    "epidural": "EDH",
    "intraparenchymal": "IPH",
    "intraventricular": "IVH",
    "subarachnoid": "SAH",
    "subdural": "SDH",
    "any": "any",
}


def person_name(pn: str) -> str:
    family, _, given = pn.partition("^")
    given = given.split("^")[0]
    tidy = (lambda s: s.title()) if pn.upper() == pn else (lambda s: s)
    return ", ".join(p for p in (tidy(family), tidy(given)) if p)


@pytest.fixture
def laptop(browser: Browser, request) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": request.param, "height": 768})
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    context.close()
    assert not errors, f"JavaScript errors: {errors}"


@pytest.mark.slow
@pytest.mark.parametrize("laptop", [1280, 1366], indirect=True)
def test_worklist_fits_a_laptop_screen_and_flagged_rows_name_their_subtypes(site, laptop):
    handle, uids, studies = site
    page = laptop
    page.goto(handle.url)
    page.wait_for_function("document.querySelectorAll('#worklist tbody tr[data-uid]').length === 3")
    widths = page.evaluate(
        "({scroll: document.documentElement.scrollWidth,"
        " client: document.documentElement.clientWidth,"
        " table: document.getElementById('worklist').getBoundingClientRect().right,"
        " last: document.querySelector('#worklist thead th:last-child')"
        ".getBoundingClientRect().right})"
    )
    assert widths["scroll"] <= widths["client"], widths
    assert widths["table"] <= widths["client"] and widths["last"] <= widths["client"], widths
    headings = page.eval_on_selector_all("#worklist thead th", "ths => ths.map(t => t.innerText)")
    for abbr in SHORT.values():
        assert any(h.startswith(abbr) for h in headings), (abbr, headings)
    by_uid = {s["study_instance_uid"]: s for s in studies}
    for uid in row_uids(page):
        badge = page.inner_text(f"#worklist tbody tr[data-uid='{uid}'] td.flag .badge")
        study = by_uid[uid]
        if study["flagged"]:
            assert badge.startswith("FLAGGED")
            for name in study["flagged_subtypes"]:
                if name != "any":
                    assert SHORT[name] in badge, (badge, study["flagged_subtypes"])
        else:
            assert "FLAGGED" not in badge
    # The page's own naming of a multi-subtype flag (whatever the current model flags).
    assert (
        page.evaluate("ICH.flagText(['subdural', 'subarachnoid', 'any'])") == "FLAGGED · SDH, SAH"
    )


@pytest.mark.slow
def test_worklist_formats_names_dates_times_thresholds_and_announces_flags(site, page):
    handle, uids, studies = site
    page.goto(handle.url)
    page.wait_for_function("document.querySelectorAll('#worklist tbody tr[data-uid]').length === 3")
    info = httpx.get(f"{handle.url}/api/info").json()
    for study in studies:
        row = f"#worklist tbody tr[data-uid='{study['study_instance_uid']}']"
        patient = study["patient"]
        assert page.inner_text(f"{row} td.patient .name") == person_name(patient["patient_name"])
        d = patient["study_date"]
        assert f"{d[:4]}-{d[4:6]}-{d[6:]}" in page.inner_text(f"{row} th.study")
        arrived = page.inner_text(f"{row} td.arrived")
        assert arrived == "just now" or arrived.endswith(" ago"), arrived
        title = page.get_attribute(f"{row} td.prob[data-subtype=subdural] .pbar", "title")
        p, t = study["probabilities"]["subdural"], info["thresholds"]["subdural"]
        assert f"p {p:.3f}, threshold {t:.3f}" in title
    assert "threshold" in page.inner_text("#legend")
    n_flagged = sum(bool(s["flagged"]) for s in studies)
    if n_flagged:
        assert page.title() == f"({n_flagged}) FLAGGED – ichnode"
    else:
        assert page.title() == "Worklist – ichnode"
    assert page.get_attribute("body", "data-favicon") == str(n_flagged)
    assert page.get_attribute("#favicon", "href").startswith("data:image/png")
    assert not page.is_checked("#sound")  # the tone is off by default


@pytest.mark.slow
def test_clicking_a_heading_sorts_and_clicking_again_reverses(site, page):
    handle, uids, studies = site
    page.goto(handle.url)
    page.wait_for_function("document.querySelectorAll('#worklist tbody tr[data-uid]').length === 3")
    any_desc = [
        s["study_instance_uid"] for s in sorted(studies, key=lambda s: -s["probabilities"]["any"])
    ]
    page.click("#worklist thead th[data-key=any] button")
    assert row_uids(page) == any_desc
    assert page.get_attribute("#worklist thead th[data-key=any]", "aria-sort") == "descending"
    page.click("#worklist thead th[data-key=any] button")
    assert row_uids(page) == any_desc[::-1]
    assert page.get_attribute("#worklist thead th[data-key=any]", "aria-sort") == "ascending"
    page.click("#worklist thead th[data-key=patient] button")
    names = page.eval_on_selector_all(
        "#worklist tbody td.patient .name", "cells => cells.map(c => c.innerText.toLowerCase())"
    )
    assert names == sorted(names)
    page.click("#worklist thead th[data-key=triage] button")
    assert row_uids(page) == [s["study_instance_uid"] for s in sorted(studies, key=triage_key)]


def test_pages_are_never_blank_without_javascript(node_factory):
    handle = serve(node_factory())
    try:
        for path in ("/", "/studies/1.2.3"):
            html = httpx.get(f"{handle.url}{path}").text
            assert "<noscript>" in html and "Loading…" in html
    finally:
        handle.stop()


@pytest.mark.slow
def test_slice_viewer_zooms_pans_windows_freely_and_resets(site, page):
    handle, uids, _ = site
    page.goto(f"{handle.url}/studies/{uids['iph']}")
    page.wait_for_selector("body[data-loaded=true]")
    page.wait_for_function(
        "(i => i.complete && i.naturalWidth > 0)(document.getElementById('slice'))"
    )
    box = page.locator("#stage").bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(cx, cy)
    page.mouse.wheel(0, -400)
    page.wait_for_function("Number(document.getElementById('stage').dataset.scale) > 1.5")
    assert "scale(" in page.eval_on_selector("#slice", "i => i.style.transform")
    # Drag pans.
    page.mouse.down()
    page.mouse.move(cx + 60, cy + 30)
    page.mouse.up()
    assert "translate(" in page.eval_on_selector("#slice", "i => i.style.transform")
    assert page.get_attribute("#stage", "data-window") == "brain"
    # Orientation letters are page text at the stage's edges: zoomed and panned, they stay.
    stage = page.locator("#stage").bounding_box()
    for edge, letter in {"top": "A", "bottom": "P", "left": "R", "right": "L"}.items():
        assert page.inner_text(f"#edge-{edge}") == letter
        spot = page.locator(f"#edge-{edge}").bounding_box()
        assert stage["x"] <= spot["x"] and spot["x"] + spot["width"] <= stage["x"] + stage["width"]
        assert (
            stage["y"] <= spot["y"] and spot["y"] + spot["height"] <= stage["y"] + stage["height"]
        )
    assert "letters=false" in page.get_attribute("#slice", "src")
    # Shift-drag: a free window, previewed with the SVG filter while dragging, then rendered by
    # the server from the stored HU (the filter gone once that image is in).
    page.keyboard.down("Shift")
    page.mouse.move(cx, cy)
    page.mouse.down()
    page.mouse.move(cx + 100, cy - 40)
    assert page.eval_on_selector("#slice", "i => i.style.filter") == 'url("#wl")'
    assert float(page.get_attribute("#wl-r", "slope")) < 1.0  # wider than the brain window
    page.mouse.up()
    page.keyboard.up("Shift")
    window = page.get_attribute("#stage", "data-window")
    center, width = (float(v) for v in window.split("/"))
    assert width > 80 and center > 40, window
    src = page.get_attribute("#slice", "src")
    assert f"center={center:.0f}" in src and f"width={width:.0f}" in src, src
    page.wait_for_function(f"document.getElementById('stage').dataset.rendered === '{window}'")
    assert page.eval_on_selector("#slice", "i => i.style.filter") == ""
    assert "(free)" in page.inner_text("#view-state")
    # Reset: zoom 1, no free window, the preset image again.
    page.click("#reset-view")
    assert page.get_attribute("#stage", "data-scale") == "1.000"
    assert page.get_attribute("#stage", "data-window") == "brain"
    assert "window=brain" in page.get_attribute("#slice", "src")
    assert page.eval_on_selector("#slice", "i => i.style.filter") == ""
    # The presets stay.
    page.check("#windows input[value=bone]")
    assert "window=bone" in page.get_attribute("#slice", "src")


@pytest.mark.slow
def test_worklist_shows_age_sex_and_the_study_time(node_factory, page):
    node = node_factory()
    header = {"PatientName": "DOE^JANE", "StudyDate": "20261201", "StudyTime": "143205"}
    full = send_with(node, 31, PatientSex="F", PatientAge="054Y", **header)
    bare = send_with(node, 32, PatientSex=None, PatientAge=None, **header)
    handle = serve(node)
    try:
        with httpx.Client(base_url=handle.url) as client:
            wait_resulted(client, 2)
        page.goto(handle.url)
        page.wait_for_function(
            "document.querySelectorAll('#worklist tbody tr[data-uid]').length === 2"
        )
        row = f"#worklist tbody tr[data-uid='{full}']"
        assert page.inner_text(f"{row} td.patient .who") == "Doe, Jane · 54 Y · F"
        assert "2026-12-01 14:32" in page.inner_text(f"{row} th.study")
        # Nothing in the headers, nothing shown: the name alone.
        assert (
            page.inner_text(f"#worklist tbody tr[data-uid='{bare}'] td.patient .who") == "Doe, Jane"
        )
    finally:
        handle.stop()
    assert page.evaluate("ICH.age('003M')") == "3 M" and page.evaluate("ICH.age('')") == ""


@pytest.mark.slow
def test_a_review_saved_on_the_study_page_shows_on_the_worklist_and_filters_it(site, page):
    handle, uids, _ = site
    page.goto(f"{handle.url}/studies/{uids['edh']}")
    page.wait_for_selector("body[data-loaded=true]")
    assert page.is_hidden("#reviews")  # no review yet
    page.check("input[name=verdict][value=missed]")
    page.check("input[name=subtype][value=epidural]")
    for nth in (2, 3):  # show two slices and mark each
        page.click(f"#strip button.thumb >> nth={nth}")
        page.click("#mark-slice")
    assert page.locator("#strip button.thumb.marked").count() == 2
    assert page.inner_text("#marked-count") == "2 slices marked"
    page.fill("#reviewer", "Dr Browser")
    page.fill("#review-note", "small left epidural")
    page.click("#review-form button[type=submit]")
    page.wait_for_function("document.getElementById('review-status').textContent === 'Saved'")
    assert "Dr Browser" in page.inner_text("#reviews")
    saved = httpx.get(f"{handle.url}/api/studies/{uids['edh']}/reviews").json()["reviews"]
    [review] = saved
    assert (review["verdict"], review["subtypes"], review["reviewer"]) == (
        "missed", ["epidural"], "Dr Browser")  # fmt: skip
    assert len(review["slices"]) == 2 and review["note"] == "small left epidural"

    page.goto(handle.url)
    page.wait_for_selector(f"#worklist tbody tr[data-uid='{uids['edh']}'] .review.missed")
    page.select_option("#reviewed", "false")
    page.wait_for_function(f"!document.querySelector(\"tr[data-uid='{uids['edh']}']\")")
    assert set(row_uids(page)) == {uids["iph"], uids["normal"]}
    page.select_option("#reviewed", "true")
    page.wait_for_function("document.querySelectorAll('#worklist tbody tr').length === 1")
    assert row_uids(page) == [uids["edh"]]
