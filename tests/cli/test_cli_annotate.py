"""`predict --labelme`, `suggest` and `export` through Typer's CliRunner."""

from __future__ import annotations

import json

import numpy as np
import torch
from PIL import Image
from typer.testing import CliRunner

from pipeline.app import app
from segpipe.inference.annotate import read_predicted_mask
from segpipe.inference.predictor import Predictor
from segpipe.models.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from segpipe.prep.labelme import load_annotation, rasterize
from tests.helpers import random_image, tiny_checkpoint

runner = CliRunner()
CLASSES = ("background", "lesion")


def write_images(folder, count: int = 3, size=(40, 52)):
    folder.mkdir(parents=True)
    for index in range(count):
        Image.fromarray(random_image(*size, seed=index)).save(folder / f"im{index}.png")
    return folder


def split_checkpoint(path, image: np.ndarray):
    """A tiny random checkpoint whose head is shifted so that about half of `image` is lesion:
    masks with several regions and holes to outline, not all background."""
    contents = load_checkpoint(tiny_checkpoint(path, seed=1))
    model = model_from_checkpoint(contents)
    probs = Predictor.from_model(model, CLASSES, contents["image_size"]).predict_probs(image)
    with torch.no_grad():
        model.head.bias[1] -= torch.log(probs[1] / probs[0]).median()
    save_checkpoint(path, {**contents, "model": model.state_dict()})
    return path


def test_predict_labelme_writes_a_file_per_mask_that_convert_paints_back_into_it(tmp_path):
    images = write_images(tmp_path / "data" / "images")
    checkpoint = split_checkpoint(tmp_path / "best.pt", np.asarray(Image.open(images / "im0.png")))
    out = tmp_path / "data" / "suggested"
    result = runner.invoke(app, ["predict", str(checkpoint), str(images), "--out", str(out), "--labelme", "--tolerance", "0", "-q"])
    assert result.exit_code == 0, result.output
    assert "3 masks and labelme files" in result.output
    for index in range(3):
        document = json.loads((out / f"im{index}.json").read_text())
        assert document["imagePath"] == f"../images/im{index}.png"
        mask = read_predicted_mask(out / f"im{index}.png", 2)
        assert 0.2 < mask.mean() < 0.8 and len(document["shapes"]) >= 3
        painted = rasterize(load_annotation(out / f"im{index}.json", tmp_path / "data"), CLASSES, ())
        # Tolerance 0: exact but where a region touches another of its class only at a corner.
        assert (painted == mask).mean() >= 0.99


def test_predict_labelme_never_overwrites_an_annotation_and_writes_nothing(tmp_path):
    images = write_images(tmp_path / "images")
    checkpoint = tiny_checkpoint(tmp_path / "best.pt")
    out = tmp_path / "out"
    out.mkdir()
    (out / "im1.json").write_text('{"shapes": ["a human drew this"]}')
    result = runner.invoke(app, ["predict", str(checkpoint), str(images), "--out", str(out), "--labelme"])
    assert result.exit_code == 1
    assert "im1.json: a labelme file is already there" in result.output
    assert (out / "im1.json").read_text() == '{"shapes": ["a human drew this"]}'
    assert sorted(p.name for p in out.iterdir()) == ["im1.json"]


def test_predict_labelme_refuses_a_negative_tolerance(tmp_path):
    images = write_images(tmp_path / "images", count=1)
    checkpoint = tiny_checkpoint(tmp_path / "best.pt")
    result = runner.invoke(app, ["predict", str(checkpoint), str(images), "--out", str(tmp_path / "o"), "--labelme", "--tolerance", "-1"])
    assert result.exit_code == 1
    assert "--tolerance must be >= 0 pixels, got -1" in result.output
    assert not (tmp_path / "o").exists()
