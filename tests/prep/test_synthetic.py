"""Tests for segpipe.prep.synthetic: determinism, file layout, labelme validity and that labels match pixels."""

import base64
import json
from io import BytesIO
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from segpipe.errors import SegpipeError
from segpipe.prep.labelme import load_annotation, rasterize
from segpipe.prep.synthetic import AERIAL_CLASSES, AERIAL_COLORS, LESION_CLASSES, make_aerial, make_lesions

SIZE = 128
COUNT = 20


@pytest.fixture(scope="module")
def lesions(tmp_path_factory) -> list[Path]:
    return make_lesions(tmp_path_factory.mktemp("lesions"), COUNT, SIZE, seed=7)


@pytest.fixture(scope="module")
def aerial(tmp_path_factory) -> list[Path]:
    return make_aerial(tmp_path_factory.mktemp("aerial"), 12, SIZE, seed=7)


def _all_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _load(json_path: Path) -> dict:
    return json.loads(json_path.read_text())


def _shape_mask(shape: dict, width: int, height: int) -> np.ndarray:
    """Rasterise one labelme shape with PIL, independently of the generator's OpenCV drawing."""
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    points = [tuple(p) for p in shape["points"]]
    if shape["shape_type"] == "polygon":
        draw.polygon(points, fill=1)
    elif shape["shape_type"] == "rectangle":
        (x0, y0), (x1, y1) = points
        draw.rectangle([min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)], fill=1)
    else:
        (cx, cy), (px, py) = points
        r = np.hypot(px - cx, py - cy)
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=1)
    return np.array(canvas, dtype=bool)


def test_class_tuples_and_palette():
    assert LESION_CLASSES == ("background", "lesion")
    assert set(AERIAL_COLORS) == set(AERIAL_CLASSES)
    assert AERIAL_COLORS["building"] == "#3C1098" and AERIAL_COLORS["water"] == "#E2A929"
    assert len(set(AERIAL_COLORS.values())) == len(AERIAL_CLASSES)


@pytest.mark.parametrize("make", [make_lesions, make_aerial])
def test_same_seed_gives_identical_bytes_and_other_seed_differs(make, tmp_path):
    make(tmp_path / "a", 3, 64, seed=1)
    make(tmp_path / "b", 3, 64, seed=1)
    make(tmp_path / "c", 3, 64, seed=2)
    first = _all_bytes(tmp_path / "a")
    assert first == _all_bytes(tmp_path / "b")
    other = _all_bytes(tmp_path / "c")
    assert first.keys() == other.keys()
    assert all(first[name] != other[name] for name in first)


@pytest.mark.parametrize("make", [make_lesions, make_aerial])
def test_image_i_does_not_depend_on_count(make, tmp_path):
    make(tmp_path / "few", 2, 64, seed=3)
    make(tmp_path / "many", 4, 64, seed=3)
    few, many = _all_bytes(tmp_path / "few"), _all_bytes(tmp_path / "many")
    assert few == {name: many[name] for name in few}


def test_lesion_naming_and_landscape_size(lesions):
    assert [p.name for p in lesions] == [f"lesion_{i:03d}.json" for i in range(COUNT)]
    for json_path in lesions:
        with Image.open(json_path.with_suffix(".jpg")) as image:
            assert image.format == "JPEG" and image.mode == "RGB"
            assert image.size == (SIZE, SIZE * 3 // 4)


def test_labelme_json_is_valid(lesions):
    shape_keys = {"label", "points", "group_id", "description", "shape_type", "flags", "mask"}
    for json_path in lesions:
        ann = _load(json_path)
        assert ann["version"] == "5.4.1" and ann["flags"] == {}
        assert ann["imagePath"] == json_path.stem + ".jpg"
        assert (json_path.parent / ann["imagePath"]).is_file()
        assert (ann["imageWidth"], ann["imageHeight"]) == (SIZE, SIZE * 3 // 4)
        [shape] = ann["shapes"]
        assert set(shape) == shape_keys and shape["label"] == "lesion"
        assert shape["group_id"] is None and shape["mask"] is None
        points = np.array(shape["points"])
        assert points.min() >= 0
        assert points[:, 0].max() <= ann["imageWidth"] and points[:, 1].max() <= ann["imageHeight"]
        expected_count = {"rectangle": (2, 2), "circle": (2, 2), "polygon": (24, 64)}[shape["shape_type"]]
        assert expected_count[0] <= len(points) <= expected_count[1]


def test_all_shape_types_and_embedded_images_appear(lesions):
    annotations = [_load(p) for p in lesions]
    types = [a["shapes"][0]["shape_type"] for a in annotations]
    assert set(types) == {"polygon", "rectangle", "circle"}
    assert types.count("polygon") >= 0.7 * len(types)
    embedded = [a for a in annotations if a["imageData"] is not None]
    assert 1 <= len(embedded) <= 3


def test_embedded_image_data_matches_the_jpeg(lesions):
    for json_path in lesions:
        ann = _load(json_path)
        if ann["imageData"] is None:
            continue
        with Image.open(BytesIO(base64.b64decode(ann["imageData"]))) as embedded:
            with Image.open(json_path.parent / ann["imagePath"]) as on_disk:
                assert np.array_equal(np.asarray(embedded), np.asarray(on_disk))


def test_annotation_covers_the_dark_lesion(lesions):
    for json_path in lesions:
        ann = _load(json_path)
        with Image.open(json_path.with_suffix(".jpg")) as image:
            grey = np.asarray(image.convert("L"), dtype=np.float32)
        inside = _shape_mask(ann["shapes"][0], ann["imageWidth"], ann["imageHeight"])
        # Median, so hairs and vignette corners do not dominate either side.
        gap = np.median(grey[~inside]) - np.median(grey[inside])
        assert gap > 40, f"{json_path.name}: lesion only {gap:.0f} grey levels darker than skin"


def test_polygon_follows_the_rendered_border(lesions):
    """A thin band just inside each polygon is darker than the band just outside it."""
    for json_path in lesions:
        ann = _load(json_path)
        shape = ann["shapes"][0]
        if shape["shape_type"] != "polygon":
            continue
        with Image.open(json_path.with_suffix(".jpg")) as image:
            grey = np.asarray(image.convert("L"), dtype=np.float32)
        inside = _shape_mask(shape, ann["imageWidth"], ann["imageHeight"])
        as_image = Image.fromarray(inside.astype(np.uint8) * 255)
        eroded = np.asarray(as_image.filter(ImageFilter.MinFilter(7))) > 0
        dilated = np.asarray(as_image.filter(ImageFilter.MaxFilter(7))) > 0
        gap = np.median(grey[dilated & ~inside]) - np.median(grey[inside & ~eroded])
        assert gap > 15, f"{json_path.name}: border bands differ by only {gap:.0f} grey levels"


def test_project_converter_reads_every_annotation(lesions):
    """segpipe.prep.labelme loads each file (imageData or imagePath) and paints the same region as PIL."""
    for json_path in lesions:
        annotation = load_annotation(json_path, json_path.parent)
        mask = rasterize(annotation, LESION_CLASSES, ()) == 1
        ann = _load(json_path)
        expected = _shape_mask(ann["shapes"][0], ann["imageWidth"], ann["imageHeight"])
        iou = (mask & expected).sum() / (mask | expected).sum()
        assert iou > 0.95, f"{json_path.name}: converter and PIL masks overlap only {iou:.2f}"


def test_output_folder_is_replaced_whole(tmp_path):
    stale = tmp_path / "out" / "lesion_099.json"
    stale.parent.mkdir()
    stale.write_text("{}")
    make_lesions(tmp_path / "out", 1, 64, seed=0)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["lesion_000.jpg", "lesion_000.json"]


def test_lesion_area_fraction_in_range(lesions):
    for json_path in lesions:
        ann = _load(json_path)
        mask = _shape_mask(ann["shapes"][0], ann["imageWidth"], ann["imageHeight"])
        assert 0.05 <= mask.mean() <= 0.40, f"{json_path.name}: lesion covers {mask.mean():.1%}"


def test_aerial_layout_and_sizes(aerial):
    assert [p.name for p in aerial] == [f"aerial_{i:03d}.jpg" for i in range(len(aerial))]
    for image_path in aerial:
        mask_path = image_path.parent.parent / "masks" / f"{image_path.stem}.png"
        with Image.open(image_path) as image, Image.open(mask_path) as mask:
            assert image.format == "JPEG" and image.size == (SIZE, SIZE)
            assert mask.format == "PNG" and mask.mode == "RGB" and mask.size == (SIZE, SIZE)


def test_aerial_masks_use_only_palette_colours_and_four_classes(aerial):
    palette = {tuple(int(c[i : i + 2], 16) for i in (1, 3, 5)): name for name, c in AERIAL_COLORS.items()}
    for image_path in aerial:
        mask_path = image_path.parent.parent / "masks" / f"{image_path.stem}.png"
        with Image.open(mask_path) as mask:
            colours = {tuple(c) for c in np.asarray(mask).reshape(-1, 3)}
        assert colours <= palette.keys(), f"{mask_path.name}: off-palette colours {colours - palette.keys()}"
        assert len(colours) >= 4, f"{mask_path.name}: only {[palette[c] for c in colours]}"


def test_aerial_classes_differ_in_the_image(aerial):
    """Each class has its own look: per-class mean colours are far apart (the task is learnable)."""
    image_path = aerial[0]
    mask_path = image_path.parent.parent / "masks" / f"{image_path.stem}.png"
    image = np.asarray(Image.open(image_path), dtype=np.float32)
    mask = np.asarray(Image.open(mask_path))
    land = np.all(mask == (0x84, 0x29, 0xF6), axis=-1)
    road = np.all(mask == (0x6E, 0xC1, 0xE4), axis=-1)
    assert np.abs(image[land].mean(0) - image[road].mean(0)).sum() > 40


@pytest.mark.parametrize("count, size", [(-1, 64), (1, 8)])
def test_bad_arguments_are_rejected(count, size, tmp_path):
    with pytest.raises(SegpipeError, match="sample"):
        make_lesions(tmp_path, count, size, seed=0)


def _road_half_widths(folder: Path) -> list[float]:
    """Per tile, the largest distance from a road pixel to the nearest non-road pixel."""
    road_rgb = tuple(int(AERIAL_COLORS["road"][i : i + 2], 16) for i in (1, 3, 5))
    widths = []
    for mask_path in sorted((folder / "masks").glob("*.png")):
        road = np.all(np.asarray(Image.open(mask_path)) == road_rgb, axis=-1).astype(np.uint8)
        widths.append(float(cv2.distanceTransform(road, cv2.DIST_L2, 3).max()))
    return widths


def test_road_width_draws_thin_roads_and_leaves_the_default_alone(aerial, tmp_path):
    thin = tmp_path / "thin"
    make_aerial(thin, 12, SIZE, seed=7, road_width=2)
    # No pixel of a 2-pixel road is more than about 1.4 pixels from its edge (more only where roads cross);
    # the default roads, 3-7% of 128 pixels, are several times wider.
    assert np.median(_road_half_widths(thin)) <= 1.5
    assert np.median(_road_half_widths(aerial[0].parent.parent)) >= 3
    # The rest follows the same draws: vegetation, painted after the roads, is where it was
    # (but for the odd building placed differently on the land the thin roads left free).
    vegetation_rgb = tuple(int(AERIAL_COLORS["vegetation"][i : i + 2], 16) for i in (1, 3, 5))
    kept = total = 0
    for mask_path in sorted((thin / "masks").glob("*.png")):
        default_mask = np.asarray(Image.open(aerial[0].parent.parent / "masks" / mask_path.name))
        default, now = (np.all(np.asarray(m) == vegetation_rgb, axis=-1) for m in (default_mask, Image.open(mask_path)))
        kept, total = kept + (default & now).sum(), total + default.sum()
    assert kept >= 0.95 * total > 0
    with pytest.raises(SegpipeError, match="road width must be >= 1"):
        make_aerial(tmp_path / "bad", 1, SIZE, seed=7, road_width=0)
