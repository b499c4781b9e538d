"""labelme parsing and drawing, each shape checked against a mask drawn by hand."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segpipe.errors import SegpipeError
from segpipe.imageio import IGNORE_INDEX
from segpipe.prep.labelme import Annotation, load_annotation, rasterize

CLASSES = ("background", "lesion", "hair")
IGNORE = ("__ignore__",)


def paint(shapes: list[dict], width: int = 8, height: int = 8) -> np.ndarray:
    """Rasterise shapes on a blank width x height picture."""
    annotation = Annotation(Path("a.json"), b"", np.zeros((height, width, 3), np.uint8), shapes)
    return rasterize(annotation, CLASSES, IGNORE)


def shape(points, shape_type="polygon", label="lesion", **extra) -> dict:
    return {"label": label, "points": points, "shape_type": shape_type, "group_id": None, "flags": {}, **extra}


def write_png(path: Path, width: int = 8, height: int = 6, color=(10, 20, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (width, height), color).save(path)
    return path


def write_json(path: Path, shapes: list[dict], **fields) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"version": "5.4.1", "flags": {}, "shapes": shapes, "imageData": None, **fields}
    path.write_text(json.dumps(data))
    return path


# --- shapes -------------------------------------------------------------------------------------


def test_rectangle_fills_its_corners_inclusive():
    expected = np.zeros((8, 8), np.uint8)
    expected[1:4, 1:5] = 1  # rows 1..3, columns 1..4
    assert np.array_equal(paint([shape([[1, 1], [4, 3]], "rectangle")]), expected)


def test_rectangle_dragged_from_bottom_right_is_the_same():
    forward = paint([shape([[1, 1], [4, 3]], "rectangle")])
    assert np.array_equal(paint([shape([[4, 3], [1, 1]], "rectangle")]), forward)


def test_polygon_triangle_fills_below_its_diagonal_with_outline():
    y, x = np.mgrid[:6, :6]
    expected = (x + y <= 4).astype(np.uint8)
    assert np.array_equal(paint([shape([[0, 0], [4, 0], [0, 4]])], 6, 6), expected)


def test_circle_of_radius_2_is_a_5x5_box_without_corners():
    expected = np.zeros((9, 9), np.uint8)
    expected[2:7, 2:7] = 2
    expected[[2, 2, 6, 6], [2, 6, 2, 6]] = 0
    # centre (4, 4); the second point lies on the rim, so the radius is 2
    assert np.array_equal(paint([shape([[4, 4], [4, 6]], "circle", "hair")], 9, 9), expected)


def test_point_is_a_disc_of_radius_5():
    mask = paint([shape([[6, 6]], "point")], 13, 13)
    rows, cols = np.nonzero(mask)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (1, 11, 1, 11)
    assert mask[6, 1:12].all() and mask[1:12, 6].all()  # full diameter both ways
    assert mask[1, 1] == 0 and mask[11, 11] == 0  # round, not square
    assert np.array_equal(mask, mask[::-1, ::-1]) and np.array_equal(mask, mask.T)


def test_line_is_10_pixels_wide():
    mask = paint([shape([[0, 8], [5, 8]], "line")], 6, 16)
    expected = np.zeros((16, 6), np.uint8)
    expected[4:14, :] = 1  # 10 rows around y = 8, along the whole length
    assert np.array_equal(mask, expected)


def test_linestrip_is_two_10_pixel_bands_without_caps():
    mask = paint([shape([[2, 2], [11, 2], [11, 11]], "linestrip")], 14, 14)
    expected = np.zeros((14, 14), np.uint8)
    expected[0:8, 2:12] = 1  # horizontal leg: rows -2..7 (clipped), x 2..11
    expected[2:12, 7:14] = 1  # vertical leg: columns 7..16 (clipped), y 2..11
    assert np.array_equal(mask, expected)


def encode_bits(bits: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(bits.astype(bool)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_mask_shape_is_pasted_into_its_box():
    bits = np.array([[1, 0, 1], [0, 1, 1]], bool)  # 3 wide, 2 high
    mask = paint([shape([[2, 1], [4, 2]], "mask", mask=encode_bits(bits))])
    expected = np.zeros((8, 8), np.uint8)
    expected[1:3, 2:5] = bits
    assert np.array_equal(mask, expected)


def test_mask_shape_is_clipped_at_the_image_edge():
    bits = np.ones((3, 3), bool)
    mask = paint([shape([[6, 6], [8, 8]], "mask", mask=encode_bits(bits))])
    assert mask.sum() == 4 and mask[6:8, 6:8].all()


def test_mask_shape_whose_box_disagrees_with_its_size_is_an_error():
    with pytest.raises(SegpipeError, match=r"shape 0 .*mask is 3x2 .*box"):
        paint([shape([[2, 1], [6, 6]], "mask", mask=encode_bits(np.ones((2, 3))))])


def test_later_shapes_are_painted_over_earlier_ones():
    mask = paint([shape([[0, 0], [7, 7]], "rectangle", "lesion"), shape([[2, 2], [3, 3]], "rectangle", "hair")])
    assert mask[2, 2] == 2 and mask[0, 0] == 1 and mask[3, 3] == 2 and mask[4, 4] == 1


def test_ignore_label_is_painted_255():
    mask = paint([shape([[1, 1], [2, 2]], "rectangle", "__ignore__")])
    assert mask[1, 1] == IGNORE_INDEX and mask[0, 0] == 0 and (mask == IGNORE_INDEX).sum() == 4


def test_points_outside_the_image_are_clipped():
    mask = paint([shape([[-5, -5], [20, 3]], "rectangle")])
    assert mask[:4].all() and not mask[4:].any()


@pytest.mark.parametrize(
    ("points", "shape_type"),
    [
        ([[0, 0], [2**31, 2**31]], "rectangle"),  # past Pillow's 32-bit coordinates
        ([[1, 1], [4, 1], [4, -1e12]], "polygon"),
        ([[4, 4], [4, 4 + 5 * 8]], "circle"),  # the radius point is 5 image sizes away
        ([[0, 0], [8 * 6, 0]], "line"),
        ([[-4 * 8 - 1, 0]], "point"),
    ],
)
def test_a_shape_far_outside_the_image_is_an_error_naming_file_and_shape(points, shape_type):
    shapes = [shape([[0, 0], [1, 1]], "rectangle"), shape(points, shape_type, "hair")]
    with pytest.raises(SegpipeError, match=r"a\.json: shape 1 \(label 'hair'\): point .* lies more than 4 image sizes outside the 8x8 image"):
        paint(shapes)


def test_a_shape_a_little_outside_the_image_is_still_clipped():
    mask = paint([shape([[-4 * 8, 0], [5 * 8, 3]], "rectangle")])
    assert mask[:4].all() and not mask[4:].any()


def test_huge_coordinates_that_overflow_a_float_are_an_error():
    with pytest.raises(SegpipeError, match=r"shape 0 \(label 'lesion'\): 'points' must be a list of \[x, y\] pairs"):
        paint([shape([[0, 0], [10**400, 1]], "rectangle")])


def test_unknown_label_names_file_label_and_classes():
    with pytest.raises(SegpipeError) as info:
        paint([shape([[1, 1], [4, 3]], "rectangle", "lesion-1")])
    message = str(info.value)
    assert "a.json" in message and "'lesion-1'" in message and "'hair'" in message and "exactly" in message


@pytest.mark.parametrize(
    ("points", "shape_type"),
    [
        ([[1, 1], [5, 5], [3, 3]], "polygon"),  # collinear
        ([[1, 1], [5, 5], [1, 1]], "polygon"),  # two distinct points
        ([[2, 2], [2, 2]], "rectangle"),
        ([[2, 2], [2, 6]], "rectangle"),  # zero width
        ([[3, 3], [3, 3]], "circle"),
    ],
)
def test_zero_area_shape_is_an_error_naming_shape_and_label(points, shape_type):
    shapes = [shape([[0, 0], [1, 1]], "rectangle"), shape(points, shape_type, "hair")]
    with pytest.raises(SegpipeError, match=r"a\.json: shape 1 \(label 'hair'\).*(no area|zero|radius 0)"):
        paint(shapes)


def test_unknown_shape_type_is_an_error():
    with pytest.raises(SegpipeError, match=r"shape 0.*unknown shape_type 'cuboid'"):
        paint([shape([[0, 0], [1, 1]], "cuboid")])


def test_missing_shape_type_means_polygon():
    legacy = {"label": "lesion", "points": [[0, 0], [4, 0], [0, 4]], "line_color": None, "fill_color": None}
    assert np.array_equal(paint([legacy], 6, 6), paint([shape([[0, 0], [4, 0], [0, 4]])], 6, 6))


# --- files --------------------------------------------------------------------------------------


def test_image_data_and_image_path_give_the_same_annotation(tmp_path):
    image = write_png(tmp_path / "img" / "a.png")
    shapes = [shape([[1, 1], [4, 3]], "rectangle")]
    by_path = load_annotation(write_json(tmp_path / "a.json", shapes, imagePath="img/a.png"), tmp_path)
    embedded = base64.b64encode(image.read_bytes()).decode()
    by_data = load_annotation(write_json(tmp_path / "b.json", shapes, imagePath="gone.png", imageData=embedded), tmp_path)
    assert by_data.image_source == image.read_bytes() and by_path.image_source == image
    assert np.array_equal(by_path.image, by_data.image)
    assert np.array_equal(rasterize(by_path, CLASSES, IGNORE), rasterize(by_data, CLASSES, IGNORE))


def test_windows_separators_in_image_path_are_accepted(tmp_path):
    write_png(tmp_path / "img" / "sub" / "a.png")
    annotation = load_annotation(write_json(tmp_path / "ann" / "a.json", [], imagePath="..\\img\\sub\\a.png"), tmp_path)
    assert annotation.image.shape == (6, 8, 3)


def test_image_path_outside_the_input_folder_is_refused(tmp_path):
    write_png(tmp_path / "secret.png")
    json_path = write_json(tmp_path / "data" / "a.json", [], imagePath="../secret.png")
    with pytest.raises(SegpipeError, match=r"a\.json: imagePath '\.\./secret\.png' points outside"):
        load_annotation(json_path, tmp_path / "data")


def test_missing_image_names_the_json(tmp_path):
    json_path = write_json(tmp_path / "a.json", [], imagePath="nope.png")
    with pytest.raises(SegpipeError, match=r"nope\.png \(imagePath of .*a\.json\): image file not found"):
        load_annotation(json_path, tmp_path)


def test_size_mismatch_names_file_and_both_sizes(tmp_path):
    write_png(tmp_path / "a.png", 8, 6)
    json_path = write_json(tmp_path / "a.json", [], imagePath="a.png", imageWidth=10, imageHeight=6)
    with pytest.raises(SegpipeError, match=r"a\.json: the JSON says the image is 10x6 .* image is 8x6"):
        load_annotation(json_path, tmp_path)


@pytest.mark.parametrize(("height", "kind"), [("6", "str"), (6.0, "float"), (True, "bool"), (0, "int")])
def test_image_size_fields_must_be_positive_integers(tmp_path, height, kind):
    write_png(tmp_path / "a.png", 8, 6)
    json_path = write_json(tmp_path / "a.json", [], imagePath="a.png", imageWidth=8, imageHeight=height)
    with pytest.raises(SegpipeError, match=rf"a\.json: imageHeight must be a positive integer \(pixels\), got {height!r} \({kind}\)"):
        load_annotation(json_path, tmp_path)


def test_legacy_labelme_3_file_converts(tmp_path):
    png = write_png(tmp_path / "a.png")
    legacy = {
        "flags": {},
        "shapes": [{"label": "lesion", "line_color": None, "fill_color": None, "points": [[1, 1], [4, 1], [4, 3], [1, 3]]}],
        "lineColor": [0, 255, 0, 128],
        "fillColor": [255, 0, 0, 128],
        "imagePath": "a.png",
        "imageData": base64.b64encode(png.read_bytes()).decode(),
    }
    (tmp_path / "a.json").write_text(json.dumps(legacy))
    mask = rasterize(load_annotation(tmp_path / "a.json", tmp_path), CLASSES, IGNORE)
    expected = np.zeros((6, 8), np.uint8)
    expected[1:4, 1:5] = 1
    assert np.array_equal(mask, expected)


def test_malformed_json_names_file_and_position(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"shapes": [\n  {"label": "lesion",,}\n]}')
    with pytest.raises(SegpipeError, match=r"broken\.json: not valid JSON \(line 2, column 22"):
        load_annotation(path, tmp_path)


def test_json_nested_100000_levels_deep_is_a_named_error(tmp_path):
    path = tmp_path / "deep.json"
    path.write_text('{"shapes": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(SegpipeError, match=r"deep\.json: JSON nested too deeply to read"):
        load_annotation(path, tmp_path)


def test_truncated_jpeg_names_the_file(tmp_path):
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(buffer, format="JPEG")
    (tmp_path / "cut.jpg").write_bytes(buffer.getvalue()[:-400])
    json_path = write_json(tmp_path / "cut.json", [], imagePath="cut.jpg")
    with pytest.raises(SegpipeError, match=r"cut\.jpg.*truncated"):
        load_annotation(json_path, tmp_path)


def save_rotated_jpeg(path: Path, width: int = 8, height: int = 4) -> Path:
    """A JPEG stored width x height whose EXIF orientation 6 shows it height x width (rotated 90 deg)."""
    exif = Image.Exif()
    exif[0x0112] = 6
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[:, : width // 2] = 255  # left half white: after rotation, the top half
    Image.fromarray(pixels).save(path, format="JPEG", exif=exif, quality=95)
    return path


def test_exif_rotated_image_is_checked_against_its_rotated_size(tmp_path):
    save_rotated_jpeg(tmp_path / "r.jpg")
    ok = load_annotation(write_json(tmp_path / "ok.json", [], imagePath="r.jpg", imageWidth=4, imageHeight=8), tmp_path)
    assert ok.image.shape == (8, 4, 3) and ok.image[0, 0, 0] > 200 and ok.image[7, 0, 0] < 50
    stale = write_json(tmp_path / "stale.json", [], imagePath="r.jpg", imageWidth=8, imageHeight=4)
    with pytest.raises(SegpipeError, match=r"EXIF orientation"):
        load_annotation(stale, tmp_path)
