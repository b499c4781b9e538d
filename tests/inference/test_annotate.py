"""Pre-annotations as labelme files: mask -> polygons -> `convert` gives the mask back."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segpipe.config import DataSection
from segpipe.imageio import read_class_mask
from segpipe.inference.annotate import (
    SUGGESTION_FLAG,
    AnnotationExistsError,
    check_no_annotations,
    mask_to_shapes,
    model_identity,
    write_annotation,
)
from segpipe.prep.convert import convert_dataset
from segpipe.prep.synthetic import make_lesions

THREE = ("background", "a", "b")


def hole_and_islands() -> np.ndarray:
    """Class a: a square ring (a 10x10 background hole) and a bar on the top edge; class b: a
    3x3 island inside the hole and a block at the bottom right."""
    mask = np.zeros((40, 50), np.uint8)
    mask[5:30, 5:30] = 1
    mask[10:20, 10:20] = 0
    mask[13:16, 13:16] = 2
    mask[30:38, 35:48] = 2
    mask[0:3, 40:50] = 1
    return mask


def round_trip(tmp_path: Path, masks: dict[str, np.ndarray], classes, tolerance: float) -> dict[str, np.ndarray]:
    """Write each mask as a labelme file beside a blank image, run `convert` on the folder, and
    return the masks it wrote."""
    folder = tmp_path / "labelme"
    folder.mkdir(parents=True)
    for stem, mask in masks.items():
        image = folder / f"{stem}.png"
        Image.fromarray(np.zeros((*mask.shape, 3), np.uint8)).save(image)
        write_annotation(folder, image, mask, classes, "best.pt sha256:0", tolerance)
    data = DataSection(mask_colors={}, workers=1)
    convert_dataset(folder, tmp_path / "out", tmp_path / "data.json", classes=tuple(classes), data=data, progress=False)
    return {stem: read_class_mask(tmp_path / "out" / "masks" / f"{stem}.png") for stem in masks}


@pytest.mark.parametrize("tolerance", [0.0, 1.0])
def test_a_hole_and_two_components_of_two_classes_come_back_pixel_for_pixel(tmp_path, tolerance):
    mask = hole_and_islands()
    back = round_trip(tmp_path, {"x": mask}, THREE, tolerance)["x"]
    np.testing.assert_array_equal(back, mask)


def test_a_hole_is_a_later_background_polygon_and_its_island_comes_after_it():
    shapes = mask_to_shapes(hole_and_islands(), THREE, tolerance=1.0)
    labels = [s["label"] for s in shapes]
    assert sorted(labels) == ["a", "a", "b", "b", "background"]
    ring, hole = labels.index("a"), labels.index("background")
    island = max(i for i, s in enumerate(shapes) if s["label"] == "b" and min(p[1] for p in s["points"]) >= 13)
    assert ring < hole < island
    # A rectangle needs only its 4 corners at a 1 px tolerance.
    assert all(len(s["points"]) == 4 for s in shapes)


def test_the_sample_masks_come_back_with_at_least_99_percent_of_pixels_at_1_px(tmp_path):
    # The project's own sample generator: lesion polygons, circles and rectangles, converted to masks.
    make_lesions(tmp_path / "sample", count=8, size=160, seed=3)
    data = DataSection(workers=1)
    convert_dataset(tmp_path / "sample", tmp_path / "truth", tmp_path / "m.json", classes=("background", "lesion"), data=data, progress=False)
    masks = {p.stem: read_class_mask(p) for p in sorted((tmp_path / "truth" / "masks").glob("*.png"))}
    assert len(masks) == 8 and all(m.any() for m in masks.values())
    back = round_trip(tmp_path / "rt", masks, ("background", "lesion"), tolerance=1.0)
    agreement = [float((back[stem] == mask).mean()) for stem, mask in masks.items()]
    assert min(agreement) >= 0.99, agreement


def test_a_single_pixel_and_a_one_pixel_line_come_back_though_their_outlines_enclose_nothing(tmp_path):
    mask = np.zeros((12, 12), np.uint8)
    mask[3, 3] = 1
    mask[8, 2:9] = 1  # horizontal
    mask[1:7, 10] = 1  # vertical
    for i in range(5):
        mask[6 + i, 6 - i] = 1  # diagonal, crossing the horizontal line at (8, 4)
    back = round_trip(tmp_path, {"x": mask}, ("background", "lesion"), tolerance=0)["x"]
    np.testing.assert_array_equal(back, mask)


def test_the_file_is_what_labelme_opens_and_names_the_model(tmp_path):
    images, out = tmp_path / "images", tmp_path / "suggested"
    images.mkdir()
    out.mkdir()
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(images / "x.jpg")
    checkpoint = tmp_path / "models" / "best.pt"
    checkpoint.parent.mkdir()
    checkpoint.write_bytes(b"weights")
    (checkpoint.parent / "mlflow_run_id.txt").write_text("abc123\n")
    model = model_identity(checkpoint)
    assert model == f"best.pt sha256:{hashlib.sha256(b'weights').hexdigest()[:12]} mlflow run abc123"
    path = write_annotation(out, images / "x.jpg", hole_and_islands(), THREE, model, 1.0)
    document = json.loads(path.read_text())
    assert path == out / "x.json"
    assert document["imagePath"] == "../images/x.jpg"
    assert document["imageData"] is None
    assert (document["imageHeight"], document["imageWidth"]) == (40, 50)
    assert document["flags"] == {SUGGESTION_FLAG: True}
    assert {s["shape_type"] for s in document["shapes"]} == {"polygon"}
    assert all(s["description"] == f"model suggestion: {model}" for s in document["shapes"])
    assert all({"label", "points", "group_id", "flags"} <= set(s) for s in document["shapes"])


def test_an_existing_labelme_file_is_refused_by_name(tmp_path):
    (tmp_path / "b.json").write_text("{}")
    check_no_annotations(tmp_path, ["a"])  # no file in the way
    with pytest.raises(AnnotationExistsError, match=r"b\.json: a labelme file is already there"):
        check_no_annotations(tmp_path, ["a", "b"])
    assert (tmp_path / "b.json").read_text() == "{}"
