"""The page in a real headless browser, used as a person would: upload or paste, look, download.

Uses Playwright for Python driving Debian's `chromium-headless-shell` (see `chromium_path` in
tests/helpers.py).
"""

from __future__ import annotations

import base64
import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segpipe.inference.prediction import PredictOptions, predict_paths
from segpipe.palette import colour_overlay
from segpipe.serving.app import create_app
from segpipe.serving.service import ModelService
from tests.helpers import BROWSER_FLAGS, chromium_path, png_bytes, random_image, running_server, tiny_checkpoint

@pytest.fixture(scope="module")
def page(tmp_path_factory):
    from playwright.sync_api import sync_playwright

    executable = chromium_path()
    root = tmp_path_factory.mktemp("browser")
    checkpoint = tiny_checkpoint(root / "best.pt")  # 2 classes, 32 px input
    with running_server(create_app(ModelService(checkpoint), 2_000_000)) as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=BROWSER_FLAGS)
        try:
            context = browser.new_context(accept_downloads=True, viewport={"width": 1200, "height": 800})
            tab = context.new_page()
            console_errors: list[str] = []  # a blocked script or style would show up here
            tab.on("console", lambda message: console_errors.append(message.text) if message.type == "error" else None)
            tab.goto(url)
            tab.wait_for_selector("#model-info:has-text('classes')")
            yield {"page": tab, "root": root, "checkpoint": checkpoint, "console_errors": console_errors,
                   "context": context, "url": url}
        finally:
            browser.close()


def predicted(env, path, **options) -> bytes:
    out = env["root"] / f"out-{path.stem}"
    assert predict_paths(env["checkpoint"], [str(path)], out, PredictOptions(**options), progress=False).ok
    return (out / f"{path.stem}.png").read_bytes()


def wait_for_result(page) -> None:
    page.wait_for_selector("#stage[data-state='done'] #layer:not([hidden])", timeout=60_000)


def screenshot(tab, env, name: str) -> None:
    """Save the page as PNG for a person to look at: under $SEGPIPE_SCREENSHOTS when set, else
    the test's temporary folder."""
    folder = Path(os.environ.get("SEGPIPE_SCREENSHOTS") or env["root"])
    folder.mkdir(parents=True, exist_ok=True)
    tab.screenshot(path=str(folder / f"{name}.png"))


def test_an_empty_page_shows_the_placeholder_and_no_broken_image(page):
    tab = page["context"].new_page()
    try:
        tab.goto(page["url"])
        tab.wait_for_selector("#model-info:has-text('classes')")
        screenshot(tab, page, "empty-page")
        assert tab.is_visible("#placeholder")
        # `#photo { display: block }` once beat `hidden`: a broken-image icon with its alt text.
        assert not tab.is_visible("#photo") and not tab.is_visible("#layer")
        assert tab.eval_on_selector("#frame", "frame => frame.getBoundingClientRect().height") == 0
    finally:
        tab.close()


def test_upload_shows_the_overlay_legend_and_downloads_the_mask_predict_writes(page):
    tab = page["page"]
    image = page["root"] / "photo.png"
    image.write_bytes(png_bytes(random_image(48, 64, seed=7)))
    tab.set_input_files("#file", str(image))
    wait_for_result(tab)
    assert not tab.is_checked("#tile")  # a model trained on whole images: whole, as predict does
    assert "whole image" in tab.inner_text("#timing")
    tab.check("#tile")  # predicts again, in the model's 32 px windows
    tab.wait_for_selector("#timing:has-text('tiled')", timeout=60_000)
    wait_for_result(tab)
    rows = tab.locator("#legend tbody tr").all_inner_texts()
    assert [row.split("\t")[0].strip() for row in rows] == ["background (not coloured)", "lesion"]
    shares = [float(row.split("\t")[1].rstrip("%")) for row in rows]
    assert sum(shares) == pytest.approx(100, abs=0.11)
    assert "model" in tab.inner_text("#timing")

    tab.fill("#opacity", "80")
    assert tab.eval_on_selector("#layer", "layer => layer.style.opacity") == "0.8"
    screenshot(tab, page, "after-an-upload")
    assert tab.is_visible("#photo") and tab.is_visible("#layer") and not tab.is_visible("#placeholder")

    with tab.expect_download() as download:
        tab.click("#download-mask")
    mask_path = page["root"] / "downloaded.png"
    download.value.save_as(mask_path)
    assert download.value.suggested_filename == "photo.png"
    mask = Image.open(mask_path)
    assert mask.size == (64, 48) and set(np.unique(np.asarray(mask))) <= {0, 255}
    assert mask_path.read_bytes() == predicted(page, image, tile=32, overlap=0.25)

    with tab.expect_download() as download:
        tab.click("#download-overlay")
    assert download.value.suggested_filename == "photo_overlay.png"
    overlay = np.asarray(Image.open(download.value.path()).convert("RGB")).astype(int)
    photo = np.asarray(Image.open(image).convert("RGB"))
    labels = (np.asarray(mask) > 0).astype(np.uint8)
    # What `predict --overlay` draws, at the slider's 80% instead of its 50%.
    assert np.abs(overlay - colour_overlay(photo, labels, 2, alpha=0.8)).max() <= 2
    assert page["console_errors"] == []


def test_a_ticked_smooth_tiling_box_stays_ticked_for_the_next_image(page):
    tab = page["page"]
    first, second = page["root"] / "first.png", page["root"] / "second.png"
    first.write_bytes(png_bytes(random_image(40, 40, seed=3)))
    second.write_bytes(png_bytes(random_image(36, 44, seed=4)))
    tab.set_input_files("#file", str(first))
    wait_for_result(tab)
    tab.check("#tile")
    tab.wait_for_selector("#timing:has-text('tiled')", timeout=60_000)
    wait_for_result(tab)
    tab.set_input_files("#file", str(second))
    tab.wait_for_selector("#timing:has-text('44 × 36')", timeout=60_000)
    wait_for_result(tab)
    assert tab.is_checked("#tile") and "tiled" in tab.inner_text("#timing")
    tab.uncheck("#tile")  # and unticked stays unticked, for the tests below
    tab.wait_for_selector("#timing:has-text('whole image')", timeout=60_000)
    wait_for_result(tab)


def test_pasted_screenshot_is_predicted_whole_when_small(page):
    tab = page["page"]
    data = png_bytes(random_image(24, 30, seed=8))
    tab.evaluate(
        """data => {
            const bytes = Uint8Array.from(atob(data), c => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], "image.png", {type: "image/png"}));
            document.dispatchEvent(new ClipboardEvent("paste", {clipboardData: transfer}));
        }""",
        base64.b64encode(data).decode(),
    )
    tab.wait_for_selector("#timing:has-text('30 × 24')", timeout=60_000)
    wait_for_result(tab)
    assert not tab.is_checked("#tile")
    assert "whole image" in tab.inner_text("#timing")
    with tab.expect_download() as download:
        tab.click("#download-mask")
    assert download.value.suggested_filename == "pasted.png"
    mask = Image.open(io.BytesIO(open(download.value.path(), "rb").read()))
    assert mask.size == (30, 24)


def test_a_file_that_is_not_an_image_shows_the_reason_and_the_page_recovers(page):
    tab = page["page"]
    bad = page["root"] / "notes.txt"
    bad.write_text("not a picture")
    tab.set_input_files("#file", str(bad))
    tab.wait_for_selector("#status.error", timeout=60_000)
    assert "not an image" in tab.inner_text("#status")
    screenshot(tab, page, "after-a-bad-upload")
    # Neither the previous image's mask (`#stage.no-photo #layer` once beat `hidden`) nor a broken image.
    assert not tab.is_visible("#layer") and not tab.is_visible("#photo")
    assert not tab.is_visible("#result-panel")
    good = page["root"] / "again.png"
    good.write_bytes(png_bytes(random_image(20, 20, seed=9)))
    tab.set_input_files("#file", str(good))
    wait_for_result(tab)
    assert tab.inner_text("#status") == ""
