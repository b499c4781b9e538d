"""The predict library: output formats, input handling, and agreement with `evaluate`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from segpipe.layout import validation_samples
from segpipe.errors import SegpipeError
from segpipe.config import EvaluateSection
from segpipe.evaluation.evaluate import EvalOutputs, evaluate
from segpipe.imageio import read_class_mask, read_image
from segpipe.inference.predictor import Predictor
from segpipe.metrics import ConfusionMatrix
from segpipe.inference.prediction import PredictOptions, predict_paths, resolve_inputs
from segpipe.models.checkpoint import load_checkpoint, save_checkpoint
from segpipe.data.tiling import Tiling, predict_tiled
from tests.helpers import make_processed, tiny_checkpoint


def balance(checkpoint: Path, images: list[Path]) -> Path:
    """Shift the head's lesion bias so that a random-weight model predicts lesion on about half the
    pixels of `images` (untrained, it predicts one class everywhere, which would test little)."""
    predictor = Predictor.from_checkpoint(checkpoint)
    probs = torch.cat([p.flatten(1) for p in predictor.predict_batch([read_image(i) for i in images])], dim=1)
    margin = torch.log(probs[1] / probs[0]).median()
    saved = load_checkpoint(checkpoint)
    saved["model"]["head.bias"][1] -= margin
    save_checkpoint(checkpoint, saved)
    return checkpoint


def save_image(path: Path, h: int, w: int, seed: int = 0, **save_args) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path, **save_args)
    return path


def assert_predict_masks_score_what_evaluate_reports(checkpoint: Path, samples, tmp_path: Path) -> list[str]:
    """Evaluate `checkpoint` on `samples`, predict their masks, re-score the written masks and
    check they give eval.json's numbers exactly; returns the absent classes."""
    out = EvalOutputs(
        tmp_path / "eval.json", tmp_path / "info.json", tmp_path / "pc.csv", tmp_path / "pi.csv", tmp_path / "iou.csv",
        tmp_path / "plots",
    )
    evaluated = evaluate(checkpoint, samples, out, EvaluateSection(batch_size=2, gallery_size=0), progress=False)
    report = predict_paths(checkpoint, [str(s.image) for s in samples], tmp_path / "pred", PredictOptions(batch_size=2), progress=False)
    assert report.ok and len(report.written) == len(samples)
    matrix = ConfusionMatrix(2)
    for sample in samples:
        truth = read_class_mask(sample.mask)
        written = np.asarray(Image.open(tmp_path / "pred" / f"{sample.id}.png"))
        assert written.shape == truth.shape
        matrix.update(truth, (written == 255).astype(np.uint8))
    rescored = matrix.compute().as_dict(["background", "lesion"])
    absent = rescored.pop("absent_classes")
    assert absent == evaluated.info["absent_classes"]
    written = json.loads(out.metrics.read_text())
    assert written == evaluated.metrics
    # The pooled scores come from the masks alone; the per-image means (mean_*) are checked in
    # tests/evaluation/test_per_image.py.
    assert rescored == {key: value for key, value in written.items() if not key.startswith("mean_")}
    assert 0 < matrix.matrix[:, 1].sum() < matrix.matrix.sum()  # both classes predicted: a real check
    return absent


def val_samples(processed: Path, tmp_path: Path):
    splits = tmp_path / "splits"
    splits.mkdir()
    (splits / "val.txt").write_text("img001\nimg003\nimg004\n")
    return validation_samples(processed, splits)


def test_predicted_masks_score_exactly_what_evaluate_reports(tmp_path, processed):
    # The same Predictor, batching and argmax behind both commands: predict's masks on the
    # validation images, scored here, must give eval.json's numbers to the last digit.
    samples = val_samples(processed, tmp_path)
    checkpoint = balance(tiny_checkpoint(tmp_path / "models" / "best.pt", image_size=32), [s.image for s in samples])
    assert assert_predict_masks_score_what_evaluate_reports(checkpoint, samples, tmp_path) == []


PATCHES = {"sampling": "patches", "patch_size": 16, "patch_scale": 0.75}


def test_tiled_evaluation_of_a_patch_model_scores_exactly_its_predict_masks(tmp_path):
    # As above, for a model trained on 16 px patches at 0.75: evaluate and predict (no --tile)
    # both cut 21 px windows and blend them, so the masks score eval.json's numbers exactly.
    samples = val_samples(make_processed(tmp_path / "processed", count=5, size=(40, 56)), tmp_path)
    checkpoint = tiny_checkpoint(tmp_path / "models" / "best.pt", image_size=16, train=PATCHES)
    checkpoint = balance(checkpoint, [s.image for s in samples])
    assert Predictor.from_checkpoint(checkpoint).tiling.tile == 21
    assert_predict_masks_score_what_evaluate_reports(checkpoint, samples, tmp_path)


def test_predict_tile_overrides_a_patch_models_own_windows(tmp_path):
    checkpoint = tiny_checkpoint(tmp_path / "best.pt", image_size=16, train=PATCHES)
    image_path = save_image(tmp_path / "in" / "big.png", 50, 70, seed=2)
    image = np.asarray(Image.open(image_path))
    predictor = Predictor.from_checkpoint(checkpoint)
    written = {}
    for tile, out in ((None, "own"), (40, "forty")):
        predict_paths(checkpoint, [str(image_path)], tmp_path / out, PredictOptions(tile=tile, probs=True), progress=False)
        expected = predict_tiled(predictor.predict_batch, image, Tiling(tile or 21, batch_size=8), keep_probs=True)[1]
        written[out] = torch.from_numpy(np.load(tmp_path / out / "big_probs.npy").astype(np.float32))
        torch.testing.assert_close(written[out], expected, atol=1e-3, rtol=0)  # stored as float16
    assert (written["own"] - written["forty"]).abs().max() > 2e-3  # well above float16 rounding


def test_two_class_masks_are_black_and_white_at_the_input_size(tmp_path):
    checkpoint = tiny_checkpoint(tmp_path / "best.pt")
    image = save_image(tmp_path / "in" / "photo.jpg", 37, 53)
    predict_paths(checkpoint, [str(image)], tmp_path / "out", PredictOptions(overlay=True, probs=True), progress=False)
    mask = Image.open(tmp_path / "out" / "photo.png")
    assert mask.mode == "L" and mask.size == (53, 37)
    assert set(np.unique(np.asarray(mask))) <= {0, 255}
    assert Image.open(tmp_path / "out" / "photo_overlay.jpg").size == (53, 37)
    probs = np.load(tmp_path / "out" / "photo_probs.npy")
    assert probs.shape == (2, 37, 53) and probs.dtype == np.float16
    np.testing.assert_allclose(probs.sum(0), 1, atol=2e-3)
    assert not list((tmp_path / "out").glob(".*"))  # no temporary files left behind


def test_multi_class_masks_are_palette_pngs_of_class_ids(tmp_path):
    checkpoint = tiny_checkpoint(tmp_path / "best.pt", classes=["bg", "a", "b", "c"])
    image = save_image(tmp_path / "in" / "x.png", 30, 30)
    predict_paths(checkpoint, [str(image)], tmp_path / "out", progress=False)
    mask = Image.open(tmp_path / "out" / "x.png")
    assert mask.mode == "P" and mask.getpalette()[3:6] == [128, 0, 0]  # VOC colour of class 1
    assert np.asarray(mask).max() < 4


def test_exif_rotated_input_gives_a_mask_of_the_rotated_size(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown rotated 90 degrees: portrait
    image = save_image(tmp_path / "in" / "phone.jpg", 20, 40, exif=exif)
    predict_paths(tiny_checkpoint(tmp_path / "best.pt"), [str(image)], tmp_path / "out", progress=False)
    assert Image.open(tmp_path / "out" / "phone.png").size == (20, 40)  # (W, H) of the upright picture


def test_tiled_prediction_writes_the_same_kind_of_mask(tmp_path):
    image = save_image(tmp_path / "in" / "big.png", 90, 130)
    report = predict_paths(tiny_checkpoint(tmp_path / "best.pt"), [str(image)], tmp_path / "out", PredictOptions(tile=32, overlap=0.5, probs=True), progress=False)
    assert report.ok
    assert Image.open(tmp_path / "out" / "big.png").size == (130, 90)
    assert np.load(tmp_path / "out" / "big_probs.npy").shape == (2, 90, 130)


def test_unreadable_file_is_reported_and_the_rest_predicted(tmp_path):
    save_image(tmp_path / "in" / "good.png", 20, 20)
    (tmp_path / "in" / "broken.png").write_bytes(b"not a png")
    report = predict_paths(tiny_checkpoint(tmp_path / "best.pt"), [str(tmp_path / "in")], tmp_path / "out", progress=False)
    assert not report.ok
    assert len(report.failed) == 1 and "broken.png" in report.failed[0]
    assert [p.name for p in report.written] == ["good.png"]


def test_output_folder_holding_the_inputs_is_refused(tmp_path):
    image = save_image(tmp_path / "in" / "a.png", 20, 20)
    with pytest.raises(SegpipeError, match=r"\(--out\) contains the input .*a\.png"):
        predict_paths(tiny_checkpoint(tmp_path / "best.pt"), [str(image)], tmp_path / "in" / ".." / "in", progress=False)
    assert sorted(p.name for p in (tmp_path / "in").iterdir()) == ["a.png"]


def test_two_inputs_with_one_stem_are_refused_by_name(tmp_path):
    first = save_image(tmp_path / "a" / "x.png", 20, 20)
    second = save_image(tmp_path / "b" / "x.jpg", 20, 20)
    with pytest.raises(SegpipeError, match=r"a/x\.png and .*b/x\.jpg"):
        predict_paths(tiny_checkpoint(tmp_path / "best.pt"), [str(first), str(second)], tmp_path / "out", progress=False)


def test_inputs_may_be_files_folders_and_globs(tmp_path):
    for name in ("b.png", "a.jpg", "c.tif"):
        save_image(tmp_path / "in" / name, 8, 8)
    (tmp_path / "in" / "notes.txt").write_text("not an image")
    assert [p.name for p in resolve_inputs([str(tmp_path / "in")])] == ["a.jpg", "b.png", "c.tif"]
    assert [p.name for p in resolve_inputs([str(tmp_path / "in" / "*.png")])] == ["b.png"]
    with pytest.raises(SegpipeError, match="no such file"):
        resolve_inputs([str(tmp_path / "missing.png")])
    with pytest.raises(SegpipeError, match="no images"):
        resolve_inputs([str(tmp_path / "in" / "*.bmp")])


def test_predict_uses_the_checkpoint_preprocessing(tmp_path):
    # The written mask is the argmax of Predictor.predict_probs: nothing else resizes the image.
    checkpoint = tiny_checkpoint(tmp_path / "best.pt", image_size=32, seed=3)
    image_path = save_image(tmp_path / "in" / "p.png", 45, 21, seed=5)
    predict_paths(checkpoint, [str(image_path)], tmp_path / "out", progress=False)
    image = np.asarray(Image.open(image_path))
    expected = Predictor.from_checkpoint(checkpoint).predict_probs(image).argmax(0).numpy()
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out" / "p.png")) == 255, expected == 1)


def test_an_input_named_like_another_inputs_overlay_writes_beside_it(tmp_path):
    # Overlays are JPEG, masks PNG: a.jpg writes a.png and a_overlay.jpg, a_overlay.jpg writes a_overlay.png.
    save_image(tmp_path / "in" / "a.jpg", 20, 20)
    save_image(tmp_path / "in" / "a_overlay.jpg", 20, 20)
    checkpoint = tiny_checkpoint(tmp_path / "best.pt")
    predict_paths(checkpoint, [str(tmp_path / "in")], tmp_path / "out", PredictOptions(overlay=True), progress=False)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "a.png", "a_overlay.jpg", "a_overlay.png", "a_overlay_overlay.jpg"
    ]
    assert Image.open(tmp_path / "out" / "a_overlay.jpg").format == "JPEG"


def test_names_differing_only_in_case_are_refused(tmp_path):
    # One file on macOS and Windows.
    save_image(tmp_path / "in" / "Scan.jpg", 20, 20)
    save_image(tmp_path / "in" / "scan.png", 20, 20)
    with pytest.raises(SegpipeError, match=r"Scan\.jpg and .*scan\.png would both write"):
        predict_paths(tiny_checkpoint(tmp_path / "best.pt"), [str(tmp_path / "in")], tmp_path / "out", progress=False)


def test_an_image_named_twice_is_predicted_once(tmp_path):
    image = save_image(tmp_path / "in" / "a.png", 20, 20)
    report = predict_paths(tiny_checkpoint(tmp_path / "best.pt"), [str(tmp_path / "in"), str(image)], tmp_path / "out", progress=False)
    assert [p.name for p in report.written] == ["a.png"]


def test_out_naming_an_existing_file_is_a_named_error(tmp_path):
    image = save_image(tmp_path / "in" / "a.png", 20, 20)
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(SegpipeError, match=r"--out .*notes\.txt is a file; name a folder"):
        predict_paths(tiny_checkpoint(tmp_path / "best.pt"), [str(image)], tmp_path / "notes.txt", progress=False)
    assert (tmp_path / "notes.txt").read_text() == "keep me"


def test_an_unreadable_checkpoint_fails_before_the_output_folder_is_created(tmp_path):
    image = save_image(tmp_path / "in" / "a.png", 20, 20)
    (tmp_path / "best.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(SegpipeError, match=r"best\.pt: not a readable segpipe checkpoint"):
        predict_paths(tmp_path / "best.pt", [str(image)], tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
