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
from test_web_api import PHANTOMS, TOKEN, send_phantoms, serve, triage_key, wait_resulted

from ichnode.db import upgrade

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


@pytest.fixture
def db_url(sqlite_url: str) -> str:
    """SQLite only: the pages read the same JSON on both backends (test_web_api runs both)."""
    upgrade(sqlite_url)
    return sqlite_url


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
def site(node_factory):
    """A node that resulted the phantoms, served over HTTP: (handle, uids, api order)."""
    node = node_factory()
    uids = send_phantoms(node)
    handle = serve(node)
    with httpx.Client(base_url=handle.url) as client:
        studies = wait_resulted(client, len(uids))
    yield handle, uids, studies
    handle.stop()


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
