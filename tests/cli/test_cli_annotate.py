"""`predict --labelme`, `suggest` and `export` through Typer's CliRunner."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from pipeline.app import app
from segpipe.inference.annotate import read_predicted_mask
from segpipe.prep.labelme import load_annotation, rasterize
from tests.helpers import random_image, split_checkpoint, tiny_checkpoint

runner = CliRunner()
CLASSES = ("background", "lesion")


def write_images(folder, count: int = 3, size=(40, 52)):
    folder.mkdir(parents=True)
    for index in range(count):
        Image.fromarray(random_image(*size, seed=index)).save(folder / f"im{index}.png")
    return folder


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


def test_predict_labelme_of_a_three_class_model_reads_its_palette_masks_back(tmp_path):
    classes = ("background", "road", "water")
    images = write_images(tmp_path / "data" / "images", count=2)
    checkpoint = split_checkpoint(tmp_path / "best.pt", np.asarray(Image.open(images / "im0.png")), classes)
    out = tmp_path / "data" / "suggested"
    result = runner.invoke(app, ["predict", str(checkpoint), str(images), "--out", str(out), "--labelme", "--tolerance", "0", "-q"])
    assert result.exit_code == 0, result.output
    for index in range(2):
        mask = np.asarray(Image.open(out / f"im{index}.png"))  # palette PNG of class ids
        assert len(np.unique(mask)) >= 2
        painted = rasterize(load_annotation(out / f"im{index}.json", tmp_path / "data"), classes, ())
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


def read_ranking(path):
    rows = [line.split(",") for line in path.read_text().splitlines()]
    return rows[0], rows[1:]


def test_suggest_ranks_every_image_and_pre_annotates_only_the_top_k(tmp_path):
    images = write_images(tmp_path / "pool", count=5)
    checkpoint = split_checkpoint(tmp_path / "best.pt", np.asarray(Image.open(images / "im0.png")))
    out = tmp_path / "next"
    result = runner.invoke(app, ["suggest", str(checkpoint), str(images), "--out", str(out), "--top", "2", "-q"])
    assert result.exit_code == 0, result.output
    header, rows = read_ranking(out / "ranking.csv")
    assert header == ["image", "score", "rank"]
    assert sorted(row[0] for row in rows) == [f"im{i}.png" for i in range(5)]
    assert [int(row[2]) for row in rows] == [1, 2, 3, 4, 5]
    scores = [float(row[1]) for row in rows]
    assert scores == sorted(scores, reverse=True) and 0 < scores[-1] <= scores[0] <= np.log(2)
    top = {Path(row[0]).stem for row in rows[:2]}
    assert {p.stem for p in out.glob("*.json")} == top == {p.stem for p in out.glob("*.png")}
    for stem in top:
        document = json.loads((out / f"{stem}.json").read_text())
        assert document["imagePath"] == f"../pool/{stem}.png" and document["shapes"]


def test_suggest_refuses_to_overwrite_a_top_image_annotation_and_writes_no_ranking(tmp_path):
    images = write_images(tmp_path / "pool", count=3)
    checkpoint = tiny_checkpoint(tmp_path / "best.pt")
    out = tmp_path / "next"
    out.mkdir()
    for index in range(3):  # whichever image ranks first, its labelme file is there
        (out / f"im{index}.json").write_text("human")
    result = runner.invoke(app, ["suggest", str(checkpoint), str(images), "--out", str(out), "--top", "1", "-q"])
    assert result.exit_code == 1
    assert "a labelme file is already there" in result.output
    assert sorted(p.name for p in out.iterdir()) == ["im0.json", "im1.json", "im2.json"]
    assert all((out / f"im{i}.json").read_text() == "human" for i in range(3))


def test_suggest_refuses_an_out_folder_inside_the_images(tmp_path):
    images = write_images(tmp_path / "pool", count=1)
    checkpoint = tiny_checkpoint(tmp_path / "best.pt")
    result = runner.invoke(app, ["suggest", str(checkpoint), str(images), "--out", str(images / "next"), "--top", "1"])
    assert result.exit_code == 1
    assert "lies inside the input" in result.output
    assert not (images / "next").exists()


def test_export_writes_an_onnx_file_and_reports_the_measured_agreement(tmp_path):
    checkpoint = tiny_checkpoint(tmp_path / "best.pt")
    result = runner.invoke(app, ["export", str(checkpoint), "--format", "onnx", "--out", str(tmp_path / "m.onnx")])
    assert result.exit_code == 0, result.output
    assert "onnxruntime matches PyTorch within" in result.output and "2x3x32x32" in result.output
    assert (tmp_path / "m.onnx").stat().st_size > 1000


def test_export_of_a_missing_checkpoint_fails_cleanly(tmp_path):
    result = runner.invoke(app, ["export", str(tmp_path / "none.pt"), "--format", "onnx", "--out", str(tmp_path / "m.onnx")])
    assert result.exit_code == 1
    assert "checkpoint not found" in result.output
    assert not (tmp_path / "m.onnx").exists()
