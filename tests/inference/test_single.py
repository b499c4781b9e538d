"""One encoded image to the mask `predict` writes: the path shared by the web page and the MLflow Model."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segpipe.errors import SegpipeError
from segpipe.inference.prediction import PredictOptions, predict_paths
from segpipe.inference.predictor import Predictor
from segpipe.inference.single import checkpoint_tiling, decode_image, mask_png, predict_labels, window_tiling
from segpipe.data.tiling import Tiling
from tests.helpers import png_bytes, random_image, tiny_checkpoint


def predict_file(checkpoint: Path, image: Path, out: Path, **options) -> bytes:
    report = predict_paths(checkpoint, [str(image)], out, PredictOptions(**options), progress=False)
    assert report.ok, report.failed
    return (out / f"{image.stem}.png").read_bytes()


@pytest.mark.parametrize("options", [{}, {"tile": 16, "overlap": 0.25}, {"tta": True}])
def test_mask_bytes_equal_the_file_predict_writes(tmp_path, options):
    checkpoint = tiny_checkpoint(tmp_path / "best.pt")
    data = png_bytes(random_image(40, 52))
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "photo.png").write_bytes(data)
    expected = predict_file(checkpoint, tmp_path / "in" / "photo.png", tmp_path / "out", **options)
    tiling = Tiling(options["tile"], options["overlap"], batch_size=8) if "tile" in options else None
    labels = predict_labels(Predictor(checkpoint), decode_image(data, "photo"), tiling, tta=options.get("tta", False))
    assert mask_png(labels, 2) == expected


def test_more_than_two_classes_give_a_palette_png_of_class_ids(tmp_path):
    checkpoint = tiny_checkpoint(tmp_path / "best.pt", classes=("bg", "a", "b"))
    labels = predict_labels(Predictor(checkpoint), random_image(20, 24))
    image = Image.open(io.BytesIO(mask_png(labels, 3)))
    assert image.mode == "P" and np.array_equal(np.asarray(image), labels)


def test_not_an_image_is_named_in_the_error():
    with pytest.raises(SegpipeError, match=r"upload 'notes.txt': not an image"):
        decode_image(b"hello, not a picture", "upload 'notes.txt'")


def test_letterbox_trained_models_have_no_tiling_of_their_own():
    assert checkpoint_tiling({"train": {"image_size": 96}}) is None
    assert checkpoint_tiling({}) is None
    assert window_tiling({"train": {}}, 96) == Tiling(96, 0.25, batch_size=8)


def test_patch_trained_models_tile_in_patches_at_native_scale():
    params = {"train": {"sampling": "patches", "patch_size": 128, "patch_scale": 0.5}}
    assert checkpoint_tiling(params) == Tiling(256, 0.25, batch_size=8)
    assert window_tiling(params, 96) == Tiling(256, 0.25, batch_size=8)
