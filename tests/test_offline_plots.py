"""`dvc plots show/diff --html-template .dvc/plots/offline.html` draws the charts with the network
off, from Vega installed in .dvc/vega; without it the page says so and shows the PNG renderings."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from PIL import Image

from tests.helpers import BROWSER_FLAGS, REPO, chromium_path

VEGA = REPO / ".dvc" / "vega" / "node_modules"


def render_page(project: Path) -> Path:
    """dvc_plots/index.html of `project` as `dvc plots show` writes it with the offline template:
    the loss curves of a three-epoch history."""
    from dvc_render import render_html
    from dvc_render.vega import VegaRenderer

    rows = [{"epoch": e, "train_loss": 1.0 / e, "rev": "workspace", "filename": "h.csv", "field": "train_loss"}
            for e in (1, 2, 3)]  # fmt: skip
    renderer = VegaRenderer(rows, "Loss", template="linear", x="epoch", y="train_loss")
    page = project / "dvc_plots" / "index.html"
    render_html([renderer], page, html_template=REPO / ".dvc" / "plots" / "offline.html")
    return page


def open_offline(page: Path, shot: Path):
    """Load `page` in headless Chromium with every network request refused; returns what it shows."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), args=BROWSER_FLAGS)
        try:
            context = browser.new_context(offline=True)
            requested: list[str] = []
            context.route(lambda url: not url.startswith("file:"), lambda route: (requested.append(route.request.url), route.abort()))
            tab = context.new_page()
            tab.goto(page.as_uri())
            tab.wait_for_load_state("load")
            tab.wait_for_timeout(500)  # vegaEmbed draws asynchronously
            tab.screenshot(path=str(shot))
            images = tab.eval_on_selector_all("#no-vega img", "imgs => imgs.map(i => i.naturalWidth)")
            return {"charts": tab.locator(".vega-embed canvas, .vega-embed svg.marks").count(),
                    "message": tab.is_visible("#no-vega"), "images": images, "requested": requested}
        finally:
            browser.close()


def test_the_offline_template_draws_the_charts_from_local_vega_with_the_network_off(tmp_path: Path):
    if not (VEGA / "vega" / "build" / "vega.min.js").is_file():
        pytest.skip("Vega is not installed: npm install --prefix .dvc/vega")
    project = tmp_path / "project"
    (project / ".dvc").mkdir(parents=True)
    (project / ".dvc" / "vega").symlink_to(REPO / ".dvc" / "vega")
    shown = open_offline(render_page(project), Path(os.environ.get("SEGPIPE_SCREENSHOTS", tmp_path)) / "plots-offline.png")
    assert shown["charts"] == 1 and not shown["message"] and shown["requested"] == []


def test_without_local_vega_the_page_says_so_and_shows_the_png_renderings(tmp_path: Path):
    project = tmp_path / "project"
    for name in ("train/loss.png", "train/miou.png", "eval/class_scores.png"):  # what train and evaluate write
        (project / "plots" / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (40, 30), (200, 30, 30)).save(project / "plots" / name)
    shown = open_offline(render_page(project), Path(os.environ.get("SEGPIPE_SCREENSHOTS", tmp_path)) / "plots-no-vega.png")
    assert shown["charts"] == 0 and shown["message"]
    assert len(shown["images"]) == 3 and all(width > 0 for width in shown["images"])
