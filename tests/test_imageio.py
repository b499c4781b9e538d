"""Reading large photos for a smaller target: reduced-scale JPEG decoding (draft mode)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segpipe.data.letterbox import Letterbox, resize_image
from segpipe.errors import SegpipeError
from segpipe.imageio import read_image, read_image_for
from tests.helpers import make_photo


@pytest.fixture(scope="module")
def photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_photo(tmp_path_factory.mktemp("photo"), "photo", (1200, 1800)).image


def test_a_large_jpeg_is_decoded_at_reduced_scale_never_below_the_target(photo: Path):
    # letterboxed into 256 x 256 it becomes 171 x 256: 1/4 scale (300 x 450) is the smallest that covers it
    pixels, full_hw = read_image_for(photo, fit=(256, 256))
    assert full_hw == (1200, 1800) and pixels.shape == (300, 450, 3) and pixels.dtype == np.uint8
    assert read_image_for(photo, scale=0.5)[0].shape == (600, 900, 3)
    assert read_image_for(photo, scale=0.1)[0].shape == (150, 225, 3)  # 1/8 is the most draft mode does
    assert read_image_for(photo, fit=(1, 1))[0].shape == (150, 225, 3)


def test_a_jpeg_near_the_target_and_other_formats_are_decoded_whole(photo: Path, tmp_path: Path):
    full = read_image(photo)
    for target in ({"scale": 0.6}, {"fit": (1000, 1000)}, {"scale": 1.0}):
        pixels, full_hw = read_image_for(photo, **target)
        assert full_hw == (1200, 1800)
        np.testing.assert_array_equal(pixels, full)
    png = tmp_path / "photo.png"
    Image.fromarray(full).save(png)
    pixels, full_hw = read_image_for(png, fit=(64, 64))
    np.testing.assert_array_equal(pixels, full)


def test_a_reduced_decode_letterboxes_to_within_a_grey_level_of_the_full_one(photo: Path):
    box = Letterbox.fit((1200, 1800), (256, 256))
    reduced = box.apply_reduced(read_image_for(photo, fit=(256, 256))[0]).astype(np.float64)
    full = box.apply_image(read_image(photo)).astype(np.float64)
    assert np.abs(reduced - full).mean() < 1.0
    assert np.percentile(np.abs(reduced - full), 99.9) <= 8


def test_exif_orientation_is_applied_and_the_full_size_is_the_turned_one(tmp_path: Path):
    stored = make_photo(tmp_path, "wide", (400, 800)).image
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned by 90 degrees: 800 high, 400 wide
    turned = tmp_path / "turned.jpg"
    Image.open(stored).save(turned, exif=exif, quality=95)
    pixels, full_hw = read_image_for(turned, fit=(100, 100))
    assert full_hw == (800, 400)
    # letterboxed into 100 x 100 it is 100 x 50: 1/8 scale of the turned size covers that exactly
    assert pixels.shape == (100, 50, 3)
    exact = resize_image(read_image(turned), (100, 50)).astype(np.float64)
    assert np.abs(pixels - exact).mean() < 1.5


def test_a_broken_or_missing_file_is_an_error_naming_it(photo: Path, tmp_path: Path):
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(photo.read_bytes()[:5000])
    with pytest.raises(SegpipeError, match=r"truncated\.jpg: cannot read image"):
        read_image_for(truncated, fit=(64, 64))
    with pytest.raises(SegpipeError, match=r"missing\.jpg: image file not found"):
        read_image_for(tmp_path / "missing.jpg", scale=0.5)
    with pytest.raises(SegpipeError, match="exactly one of fit or scale"):
        read_image_for(photo)
