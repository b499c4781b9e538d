"""Mask folders: pairing images with masks, and mask values -> class ids for every mask mode."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segpipe.errors import SegpipeError
from segpipe.imageio import IGNORE_INDEX
from segpipe.prep.maskfolder import find_pairs, load_pair, mask_to_ids, parse_mask_colors, unknown_values_report

CLASSES = ("background", "lesion", "hair")
GRAY = parse_mask_colors({"background": 0, "lesion": 255, "hair": 128}, CLASSES)
HEX = parse_mask_colors({"background": "#000000", "lesion": "#FF0000", "hair": "#00ff00"}, CLASSES)

# a 2x3 mask: background, lesion, hair / hair, lesion, background
LEVELS = np.array([[0, 255, 128], [128, 255, 0]], np.uint8)
EXPECTED = np.array([[0, 1, 2], [2, 1, 0]], np.uint8)


# --- mask_colors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("colors", "pattern"),
    [
        ({"lesion": 256}, r"data\.mask_colors\.lesion: gray value 256 is outside 0-255"),
        ({"lesion": "red"}, r"data\.mask_colors\.lesion: expected a gray value 0-255 or a colour '#RRGGBB', got 'red'"),
        ({"tumour": 1}, r"data\.mask_colors\.tumour: 'tumour' is not in base\.classes"),
        ({"background": 0, "lesion": 0}, r"data\.mask_colors\.lesion: value 0 is also given to 'background'"),
        ({"background": 0, "lesion": "#000000"}, r"data\.mask_colors\.lesion: .*also given to 'background'"),
    ],
)
def test_bad_mask_colors_name_the_key(colors, pattern):
    with pytest.raises(SegpipeError, match=pattern):
        parse_mask_colors(colors, CLASSES)


# --- mask modes ---------------------------------------------------------------------------------


def test_gray_mask_values_map_to_class_ids():
    ids, unknown = mask_to_ids(Image.fromarray(LEVELS), GRAY, "m.png")
    assert np.array_equal(ids, EXPECTED) and unknown == {}


def test_one_bit_mask_reads_as_0_and_255():
    colors = parse_mask_colors({"background": 0, "lesion": 255}, CLASSES)
    bits = Image.fromarray(np.array([[True, False], [False, True]]))
    assert bits.mode == "1"
    ids, _ = mask_to_ids(bits, colors, "m.png")
    assert np.array_equal(ids, [[1, 0], [0, 1]])


def test_palette_mask_with_gray_values_compares_palette_indices():
    # VOC style: index 1 drawn dark red, but mask_colors speak of indices
    colors = parse_mask_colors({"background": 0, "lesion": 1, "hair": 2}, CLASSES)
    image = Image.fromarray(np.array([[0, 1], [2, 1]], np.uint8)).convert("P")
    image.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [0] * (253 * 3))
    ids, _ = mask_to_ids(image, colors, "m.png")
    assert np.array_equal(ids, [[0, 1], [2, 1]])


def test_palette_mask_with_hex_colours_compares_palette_colours():
    image = Image.fromarray(np.array([[0, 1], [2, 1]], np.uint8)).convert("P")
    image.putpalette([0, 0, 0, 0, 255, 0, 255, 0, 0] + [0] * (253 * 3))  # index 1 green, 2 red
    ids, _ = mask_to_ids(image, HEX, "m.png")
    assert np.array_equal(ids, [[0, 2], [1, 2]])


def test_rgb_mask_with_hex_colours():
    rgb = np.zeros((2, 3, 3), np.uint8)
    rgb[0, 1] = (255, 0, 0)
    rgb[1, 2] = (0, 255, 0)
    ids, unknown = mask_to_ids(Image.fromarray(rgb), HEX, "m.png")
    assert np.array_equal(ids, [[0, 1, 0], [0, 0, 2]]) and unknown == {}


def test_rgba_mask_with_hex_colours_ignores_alpha():
    rgba = np.zeros((1, 2, 4), np.uint8)
    rgba[0, 1] = (255, 0, 0, 128)
    ids, _ = mask_to_ids(Image.fromarray(rgba), HEX, "m.png")
    assert np.array_equal(ids, [[0, 1]])


def test_gray_stored_as_rgb_is_accepted_with_gray_values():
    ids, _ = mask_to_ids(Image.fromarray(LEVELS).convert("RGB"), GRAY, "m.png")
    assert np.array_equal(ids, EXPECTED)


def test_coloured_rgb_mask_with_gray_values_asks_for_hex_colours():
    rgb = np.zeros((2, 2, 3), np.uint8)
    rgb[1, 0] = (255, 0, 0)
    with pytest.raises(SegpipeError, match=r"m\.png: the mask has colours \(e\.g\. #ff0000 at x=0, y=1\).*'#RRGGBB'"):
        mask_to_ids(Image.fromarray(rgb), GRAY, "m.png")


def test_16_bit_mask_values_above_255_are_unknown():
    image = Image.fromarray(np.array([[0, 255], [1000, 128]], np.uint16))
    assert image.mode.startswith("I")
    ids, unknown = mask_to_ids(image, GRAY, "m.png")
    assert np.array_equal(ids, [[0, 1], [IGNORE_INDEX, 2]]) and unknown == {1000: 1}


def test_unknown_values_are_counted_and_painted_ignore():
    levels = np.array([[0, 7, 7], [200, 255, 7]], np.uint8)
    ids, unknown = mask_to_ids(Image.fromarray(levels), GRAY, "m.png")
    assert unknown == {7: 3, 200: 1}
    assert np.array_equal(ids, [[0, 255, 255], [255, 1, 255]])


def test_unknown_colours_are_reported_as_hex():
    rgb = np.zeros((1, 2, 3), np.uint8)
    rgb[0, 1] = (1, 2, 3)
    _, unknown = mask_to_ids(Image.fromarray(rgb), HEX, "m.png")
    report = unknown_values_report([("masks/a.png", unknown)], HEX)
    assert "  #010203: 1 pixels in masks/a.png" in report


def jpeg_roundtrip(image: Image.Image) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=75, subsampling=0)  # 4:4:4, as the module docstring asks
    return Image.open(io.BytesIO(buffer.getvalue()))


def test_jpeg_gray_mask_is_snapped_to_the_nearest_value():
    levels = np.zeros((16, 16), np.uint8)
    levels[4:12, 4:12] = 255
    noisy = jpeg_roundtrip(Image.fromarray(levels))
    assert not np.isin(np.asarray(noisy), [0, 255]).all()  # the compression really added noise
    ids, unknown = mask_to_ids(noisy, GRAY, "m.jpg", lossy=True)
    assert np.array_equal(ids, levels // 255) and unknown == {}


def test_jpeg_colour_mask_is_snapped_to_the_nearest_colour():
    rgb = np.zeros((16, 16, 3), np.uint8)
    rgb[:, 8:] = (255, 0, 0)
    ids, unknown = mask_to_ids(jpeg_roundtrip(Image.fromarray(rgb)), HEX, "m.jpg", lossy=True)
    expected = np.zeros((16, 16), np.uint8)
    expected[:, 8:] = 1
    assert np.array_equal(ids, expected) and unknown == {}


def test_values_far_from_every_class_stay_unknown_in_jpeg_masks():
    ids, unknown = mask_to_ids(Image.fromarray(np.full((1, 1), 60, np.uint8)), GRAY, "m.jpg", lossy=True)
    assert ids[0, 0] == IGNORE_INDEX and unknown == {60: 1}


# --- pairing ------------------------------------------------------------------------------------


def make_folder(root: Path, images: list[str], masks: list[str], size=(4, 3)) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for name in images:
        Image.new("RGB", size, (9, 9, 9)).save(root / "images" / name)
    for name in masks:
        Image.new("L", size, 0).save(root / "masks" / name)
    return root


def test_mask_suffix_pairs_ph2_style_names(tmp_path):
    root = make_folder(tmp_path, ["IMD002.jpg", "IMD003.jpg"], ["IMD002_lesion.png", "IMD003_lesion.bmp"])
    pairs, problems = find_pairs(root, "_lesion")
    assert problems == []
    assert [(i.name, m.name) for i, m in pairs] == [("IMD002.jpg", "IMD002_lesion.png"), ("IMD003.jpg", "IMD003_lesion.bmp")]


def test_png_mask_comes_first_and_a_second_mask_is_reported(tmp_path):
    root = make_folder(tmp_path, ["a.jpg"], ["a.jpg", "a.png"])
    pairs, problems = find_pairs(root, "")
    assert pairs[0][1].name == "a.png"
    assert len(problems) == 1 and "masks/a.jpg: a second mask for a.jpg (a.png is the first)" in problems[0]


def test_images_without_masks_and_masks_without_images_are_all_named(tmp_path):
    root = make_folder(tmp_path, ["a.jpg", "b.jpg", "c.jpg"], ["a.png", "x.png", "y.png"])
    pairs, problems = find_pairs(root, "")
    assert [i.name for i, _ in pairs] == ["a.jpg"]
    assert len(problems) == 4
    assert "b.jpg: no mask found" in problems[0] and "c.jpg: no mask found" in problems[1]
    assert "x.png: mask without an image" in problems[2] and "y.png: mask without an image" in problems[3]


def test_missing_masks_folder_is_named(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(SegpipeError, match=r"masks: folder not found"):
        find_pairs(tmp_path, "")


def test_empty_images_folder_is_named(tmp_path):
    root = make_folder(tmp_path, [], [])
    with pytest.raises(SegpipeError, match=r"images: no images found"):
        find_pairs(root, "")


def test_mask_of_another_size_is_an_error_naming_both(tmp_path):
    root = make_folder(tmp_path, ["a.jpg"], [])
    Image.new("L", (5, 3), 0).save(root / "masks" / "a.png")
    with pytest.raises(SegpipeError, match=r"a\.png: the mask is 5x3 but its image a\.jpg is 4x3"):
        load_pair(root / "images" / "a.jpg", root / "masks" / "a.png", GRAY)
