"""`python -m pipeline evaluate` and `python -m pipeline predict` through Typer's CliRunner."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from pipeline.app import app
from tests.helpers import tiny_checkpoint

runner = CliRunner()


def test_evaluate_writes_every_output_and_reports(tmp_path, processed, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative default paths, if any were used, stay in tmp
    splits = tmp_path / "splits"
    splits.mkdir()
    (splits / "val.txt").write_text("img000\nimg002\n")
    checkpoint = tiny_checkpoint(tmp_path / "models" / "best.pt")
    params = tmp_path / "params.yaml"
    params.write_text("evaluate:\n  gallery_size: 1\n  device: cpu\n")
    m = tmp_path / "metrics"
    result = runner.invoke(app, [
        "evaluate", str(checkpoint), str(processed), str(splits),
        "--metrics", str(m / "eval.json"), "--info", str(m / "info.json"),
        "--per-class", str(m / "pc.csv"), "--per-image", str(m / "pi.csv"),
        "--iou-plot", str(m / "iou.csv"), "--plots-dir", str(tmp_path / "plots"), "--params", str(params), "-q",
    ])
    assert result.exit_code == 0, result.output
    assert "over 2 images" in result.output
    assert json.loads((m / "info.json").read_text())["images"] == 2
    assert "miou" in json.loads((m / "eval.json").read_text())
    assert len((m / "pi.csv").read_text().splitlines()) == 3
    assert (tmp_path / "plots" / "gallery.png").is_file()


def test_evaluate_with_a_missing_checkpoint_fails_cleanly(tmp_path, processed):
    splits = tmp_path / "splits"
    splits.mkdir()
    (splits / "val.txt").write_text("img000\n")
    params = tmp_path / "params.yaml"
    params.write_text("{}\n")
    result = runner.invoke(app, ["evaluate", str(tmp_path / "none.pt"), str(processed), str(splits), "--params", str(params)])
    assert result.exit_code == 1
    assert "checkpoint not found" in result.output


def write_images(folder, names):
    folder.mkdir(parents=True)
    for index, name in enumerate(names):
        pixels = np.random.default_rng(index).integers(0, 256, (24, 30, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / name)


def test_predict_writes_masks_and_overlays(tmp_path):
    write_images(tmp_path / "in", ["a.png", "b.jpg"])
    checkpoint = tiny_checkpoint(tmp_path / "best.pt")
    result = runner.invoke(app, ["predict", str(checkpoint), str(tmp_path / "in"), "--out", str(tmp_path / "out"),
                                 "--overlay", "--device", "cpu", "-q"])
    assert result.exit_code == 0, result.output
    assert "2 masks" in result.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.png", "a_overlay.jpg", "b.png", "b_overlay.jpg"]


def test_predict_skips_a_bad_file_and_exits_non_zero(tmp_path):
    write_images(tmp_path / "in", ["a.png", "c.png"])
    (tmp_path / "in" / "b.png").write_bytes(b"\x89PNG truncated")
    checkpoint = tiny_checkpoint(tmp_path / "best.pt")
    result = runner.invoke(app, ["predict", str(checkpoint), str(tmp_path / "in"), "--out", str(tmp_path / "out"),
                                 "--device", "cpu", "-q"])
    assert result.exit_code == 1
    assert "b.png" in result.output and "1 failed" in result.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.png", "c.png"]


def test_predict_refuses_to_write_into_the_input_folder(tmp_path):
    write_images(tmp_path / "in", ["a.png"])
    checkpoint = tiny_checkpoint(tmp_path / "best.pt")
    result = runner.invoke(app, ["predict", str(checkpoint), str(tmp_path / "in" / "*.png"), "--out", str(tmp_path / "in"), "-q"])
    assert result.exit_code == 1
    assert "(--out) contains the input" in result.output
    assert [p.name for p in (tmp_path / "in").iterdir()] == ["a.png"]


def test_predict_a_folder_reads_webp_and_warns_of_a_multi_page_tiff(tmp_path):
    checkpoint = tiny_checkpoint(tmp_path / "best.pt")
    images = tmp_path / "images"
    images.mkdir()
    pixels = np.random.default_rng(1).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(images / "web.webp")
    pages = [Image.fromarray(pixels), Image.new("RGB", (30, 20))]
    pages[0].save(images / "stack.tiff", save_all=True, append_images=pages[1:])
    result = runner.invoke(app, ["predict", str(checkpoint), str(images), "--out", str(tmp_path / "out"), "--device", "cpu", "-q"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["stack.png", "web.png"]
    assert Image.open(tmp_path / "out" / "web.png").size == (30, 20)
    assert f"{images / 'stack.tiff'}: has 2 pages (frames); only the first is used" in result.output
