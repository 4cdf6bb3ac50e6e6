"""Make the worklist and study screenshots in docs/img from a live node with phantom studies.

    python tests/make_screenshots.py [--out docs/img]

Starts a node on a temporary SQLite database, sends phantom head CTs over DICOM (bleeds and a
normal head), serves the web app on a free port and photographs both pages in the system's
headless Chromium at a laptop size (1366x768) and a full-HD monitor (1920x1080):
``worklist-1366x768.png``, ``study-1366x768.png``, ``worklist-1920x1080.png``,
``study-1920x1080.png``; ``worklist.png`` and ``study.png`` (linked from the README) are the
1366x768 ones.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent / "node"))

from helpers import free_port  # noqa: E402
from playwright.sync_api import sync_playwright  # noqa: E402
from test_browser_worklist import CHROMIUM, CHROMIUM_ARGS  # noqa: E402
from web_fixtures import send_phantoms, serve, wait_resulted  # noqa: E402

from ichnode.config import Settings  # noqa: E402
from ichnode.node.server import Node  # noqa: E402

SHOTS = (
    ("iph", 2, ("intraparenchymal",)),
    ("sdh", 3, ("subdural", "intraparenchymal")),
    ("ivh", 5, ("intraventricular",)),
    ("edh", 4, ("epidural",)),
    ("normal", 10, ()),
    ("normal2", 16, ()),
)
VIEWPORTS = ((1366, 768), (1920, 1080))
#: The size saved again as worklist.png / study.png.
DEFAULT = (1366, 768)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/img"))
    out = parser.parse_args().out
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(
            db_url=f"sqlite:///{tmp}/ichnode.db",
            store=Path(tmp) / "store",
            port=free_port(),
            stable_seconds=0.5,
            device="cpu",
            min_free_bytes=0,
        )
        node = Node(settings)
        node.start()
        handle = None
        try:
            uids = send_phantoms(node, SHOTS)
            handle = serve(node)
            with httpx.Client(base_url=handle.url) as client:
                wait_resulted(client, len(uids))
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                for width, height in VIEWPORTS:
                    shoot(browser, handle.url, uids, out, width, height)
                browser.close()
        finally:
            if handle is not None:
                handle.stop()
            node.stop()
    print(f"wrote {', '.join(written)} in {out}")


written: list[str] = []


def shoot(browser, url: str, uids: dict[str, str], out: Path, width: int, height: int) -> None:
    """Both pages at ``width`` x ``height`` (the viewport; the study page in full)."""
    page = browser.new_page(viewport={"width": width, "height": height})
    page.goto(url)
    page.wait_for_function(
        f"document.querySelectorAll('#worklist tbody tr[data-uid]').length === {len(uids)}"
    )
    names = [f"worklist-{width}x{height}.png"]
    page.screenshot(path=str(out / names[0]))
    page.goto(f"{url}/studies/{uids['sdh']}")
    page.wait_for_selector("body[data-loaded=true]")
    page.wait_for_function("[...document.images].every(i => i.complete && i.naturalWidth > 0)")
    names.append(f"study-{width}x{height}.png")
    page.screenshot(path=str(out / names[1]), full_page=True)
    page.close()
    if (width, height) == DEFAULT:
        for name in names:
            shutil.copyfile(out / name, out / f"{name.split('-')[0]}.png")
    written.extend(names)


if __name__ == "__main__":
    main()
