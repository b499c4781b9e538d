"""The evaluate stage on a hand-computed case, its files, and its MLflow logging."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from segpipe.models import checkpoint as checkpoint_module
from segpipe.layout import Sample
from segpipe.config import EvaluateSection
from segpipe.errors import SegpipeError
from segpipe.evaluation import evaluate as evaluate_module
from segpipe.evaluation.evaluate import EvalOutputs, absent_report, evaluate
from segpipe.imageio import read_image, write_mask
from segpipe.tracking import PER_IMAGE_ARTIFACT, RUN_ID_FILE
from tests.helpers import CountingCalls, make_photo, tiny_checkpoint

CLASSES = ["background", "lesion", "other"]


class RedIsLesion(nn.Module):
    """Predicts lesion exactly where the image is red (R = 255) and background elsewhere; never 'other'.

    After ImageNet normalisation red 255 is positive and red 0 negative, so the sign of the red
    channel is the lesion logit; 'other' gets a logit far below both.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        red = x[:, 0]
        return torch.stack([torch.zeros_like(red), red, torch.full_like(red, -100.0)], dim=1)


def write_sample(root: Path, image_id: str, red: np.ndarray, mask: np.ndarray) -> Sample:
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(exist_ok=True)
    image = np.zeros((*red.shape, 3), np.uint8)
    image[..., 0] = red * 255
    Image.fromarray(image).save(root / "images" / f"{image_id}.png")
    write_mask(root / "masks" / f"{image_id}.png", mask.astype(np.uint8))
    return Sample(image_id, root / "images" / f"{image_id}.png", root / "masks" / f"{image_id}.png")


@pytest.fixture
def hand_case(tmp_path, monkeypatch):
    """Two 4x4 images scored by RedIsLesion; the confusion matrix is worked out below."""
    # Image a: truth lesion in the top-left 2x2; predicted lesion along the top row.
    truth_a = np.zeros((4, 4)); truth_a[:2, :2] = 1
    pred_a = np.zeros((4, 4)); pred_a[0, :] = 1
    # Image b: no lesion, (3, 3) ignored; predicted lesion at (0, 0) only.
    truth_b = np.zeros((4, 4)); truth_b[3, 3] = 255
    pred_b = np.zeros((4, 4)); pred_b[0, 0] = 1
    samples = [write_sample(tmp_path / "data", "a", pred_a, truth_a), write_sample(tmp_path / "data", "b", pred_b, truth_b)]
    # image_size 4 = the images' size: the letterbox changes nothing, predictions are exactly the red pixels.
    checkpoint = tiny_checkpoint(tmp_path / "models" / "best.pt", classes=CLASSES, image_size=4)
    monkeypatch.setattr(checkpoint_module, "model_from_checkpoint", lambda ckpt: RedIsLesion())
    out = EvalOutputs(
        metrics=tmp_path / "m" / "eval.json",
        info=tmp_path / "m" / "eval_info.json",
        per_class=tmp_path / "m" / "per_class.csv",
        per_image=tmp_path / "m" / "per_image.csv",
        iou_plot=tmp_path / "m" / "iou.csv",
        plots_dir=tmp_path / "plots",
    )
    return checkpoint, samples, out


# Rows = truth, columns = prediction, over 31 labelled pixels:
#   a: truth bg 12 -> 10 bg, 2 lesion (0,2) (0,3); truth lesion 4 -> 2 lesion, 2 bg (1,0) (1,1)
#   b: truth bg 15 -> 14 bg, 1 lesion (0,0)
#   => [[24, 3, 0], [2, 2, 0], [0, 0, 0]]
EXPECTED = {
    "miou": (24 / 29 + 2 / 7) / 2,
    "iou_background": 24 / 29,
    "iou_lesion": 2 / 7,
    "precision_lesion": 2 / 5,
    "pa_lesion": 2 / 4,
    "pa_background": 24 / 27,
    "dice_lesion": 4 / 9,
    "mprecision": (24 / 26 + 2 / 5) / 2,
    "mpa": (24 / 27 + 2 / 4) / 2,
    "accuracy": 26 / 31,
}


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_scores_match_the_hand_computed_confusion_matrix(hand_case):
    checkpoint, samples, out = hand_case
    report = evaluate(checkpoint, samples, out, EvaluateSection(gallery_size=1), progress=False)
    written = json.loads(out.metrics.read_text())
    assert written == report.metrics
    for key, value in EXPECTED.items():
        assert written[key] == pytest.approx(value), key


def test_metrics_json_holds_scores_only_and_the_info_json_what_was_scored(hand_case):
    checkpoint, samples, out = hand_case
    evaluate(checkpoint, samples, out, EvaluateSection(gallery_size=0), progress=False)
    written = json.loads(out.metrics.read_text())
    assert all(isinstance(value, float) or value is None for value in written.values())
    assert not any(key.startswith("recall") or key == "mrecall" for key in written)  # recall is pa_*, once
    info = json.loads(out.info.read_text())
    assert (info["images"], info["absent_classes"], info["surface_tolerance_px"]) == (2, ["other"], 2.0)


def test_absent_class_is_null_reported_and_left_out_of_the_means(hand_case):
    checkpoint, samples, out = hand_case
    report = evaluate(checkpoint, samples, out, EvaluateSection(gallery_size=0), progress=False)
    assert report.info["absent_classes"] == ["other"]
    assert report.metrics["iou_other"] is None and report.metrics["dice_other"] is None
    assert "NaN" not in out.metrics.read_text()
    assert absent_report(report.info) == "absent from ground truth and prediction, left out of the means: other"
    assert report.metrics["miou"] == pytest.approx(EXPECTED["miou"])  # a mean over 2 classes, not 3


def test_per_class_csv_has_counts_and_blank_undefined_cells(hand_case):
    checkpoint, samples, out = hand_case
    evaluate(checkpoint, samples, out, EvaluateSection(gallery_size=0), progress=False)
    rows = {row["class"]: row for row in read_csv(out.per_class)}
    assert list(rows) == CLASSES
    assert (rows["background"]["gt_pixels"], rows["background"]["pred_pixels"]) == ("27", "26")
    assert (rows["lesion"]["gt_pixels"], rows["lesion"]["pred_pixels"]) == ("4", "5")
    assert float(rows["lesion"]["pixel_accuracy"]) == pytest.approx(0.5)
    assert "recall" not in rows["lesion"]  # the same number as pixel_accuracy: not a second column
    assert rows["other"]["iou"] == "" and rows["other"]["present"] == "False"
    plot_rows = read_csv(out.iou_plot)
    assert [row["class"] for row in plot_rows] == ["background", "lesion"]
    assert float(plot_rows[1]["iou"]) == pytest.approx(2 / 7)


def test_per_image_csv_has_one_row_per_image_with_its_own_scores(hand_case):
    checkpoint, samples, out = hand_case
    evaluate(checkpoint, samples, out, EvaluateSection(gallery_size=0), progress=False)
    rows = read_csv(out.per_image)
    assert [row["id"] for row in rows] == ["a", "b"]
    field = [f"image_{score}_{name}" for name in ("lesion", "other")
             for score in ("jaccard", "thresholded_jaccard", "dice", "hd95", "nsd")]
    assert list(rows[0]) == ["id", "iou_background", "iou_lesion", "iou_other",
                             "dice_background", "dice_lesion", "dice_other", "miou", *field]
    assert float(rows[0]["iou_lesion"]) == pytest.approx(2 / 6)
    assert float(rows[0]["iou_background"]) == pytest.approx(10 / 14)
    assert float(rows[1]["iou_lesion"]) == 0.0  # predicted but not in the truth: present, IoU 0
    assert rows[1]["iou_other"] == "" and rows[1]["dice_other"] == ""
    assert float(rows[1]["miou"]) == pytest.approx((14 / 15) / 2)


def test_per_image_means_follow_the_stated_empty_mask_conventions_by_hand(hand_case):
    checkpoint, samples, out = hand_case
    report = evaluate(checkpoint, samples, out, EvaluateSection(gallery_size=0, surface_tolerance=1), progress=False)
    # Image a, lesion: truth the top-left 2x2, prediction the top row: Jaccard 2/6, Dice 4/8.
    # Boundary distances truth -> prediction 0 0 1 1, prediction -> truth 0 0 1 2: HD95 =
    # max(1, 1 + 0.85 * 1) = 1.85 (linear percentile, index 2.85); within 1 px: 4 + 3 of 8.
    # Image b, lesion: no truth, one predicted pixel: 0, 0, HD95 left out, surface Dice 0.
    # 'other': empty on both sides in both images: 1, 1, HD95 left out, surface Dice 1.
    metrics = report.metrics
    assert metrics["mean_jaccard_lesion"] == pytest.approx((2 / 6 + 0) / 2)
    assert metrics["mean_dice_lesion"] == pytest.approx((4 / 8 + 0) / 2)
    assert metrics["mean_thresholded_jaccard_lesion"] == 0.0
    assert metrics["mean_hd95_lesion"] == pytest.approx(1.85)
    assert metrics["mean_nsd_lesion"] == pytest.approx((7 / 8 + 0) / 2)
    assert (metrics["mean_jaccard_other"], metrics["mean_hd95_other"]) == (1.0, None)
    assert metrics["mean_jaccard"] == pytest.approx((1 / 6 + 1) / 2)
    assert metrics["iou_lesion"] == pytest.approx(EXPECTED["iou_lesion"])  # the pooled scores stay
    assert report.info["per_image_means"]["lesion"] == {
        "images": 2, "hd95_images": 1, "both_empty": 0, "truth_empty_only": 1, "prediction_empty_only": 0,
    }
    assert report.info["per_image_means"]["other"]["both_empty"] == 2
    rows = read_csv(out.per_image)
    assert float(rows[0]["image_hd95_lesion"]) == pytest.approx(1.85) and rows[1]["image_hd95_lesion"] == ""
    assert rows[1]["image_dice_other"] == "1.000000" and rows[1]["dice_other"] == ""
    assert json.loads(out.info.read_text()) == report.info


def test_figures_are_written(hand_case):
    checkpoint, samples, out = hand_case
    evaluate(checkpoint, samples, out, EvaluateSection(gallery_size=1), progress=False)
    for name in ("class_scores.png", "confusion_matrix.png", "gallery.png"):
        assert Image.open(out.plots_dir / name).size[0] > 100


def test_metrics_are_logged_to_the_training_run(hand_case, tmp_path, monkeypatch):
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.create_experiment("t", artifact_location=(tmp_path / "mlruns").as_uri())
    with mlflow.start_run(experiment_id=experiment) as run:
        mlflow.log_metric("val_miou", 0.5)
    checkpoint, samples, out = hand_case
    (checkpoint.parent / RUN_ID_FILE).write_text(run.info.run_id + "\n")
    evaluate(checkpoint, samples, out, EvaluateSection(gallery_size=0), progress=False)
    data = mlflow.MlflowClient(uri).get_run(run.info.run_id).data
    logged = data.metrics
    assert logged["miou"] == pytest.approx(EXPECTED["miou"])
    assert logged["val_miou"] == 0.5
    assert math.isnan(logged["iou_other"])  # undefined: NaN, so every run has the same names
    assert "images" not in logged  # a count, not a result: a tag, off the metric charts
    assert data.tags["segpipe.eval_images"] == "2" and data.tags["segpipe.absent_classes"] == "other"
    artifacts = {a.path for a in mlflow.MlflowClient(uri).list_artifacts(run.info.run_id, "eval")}
    assert PER_IMAGE_ARTIFACT in artifacts  # the fixed name `compare` reads
    assert mlflow.MlflowClient(uri).get_run(run.info.run_id).info.status == "FINISHED"


def test_mlflow_failure_is_a_warning_and_the_files_are_still_written(hand_case, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'missing-folder' / 'mlflow.db'}")
    checkpoint, samples, out = hand_case
    (checkpoint.parent / RUN_ID_FILE).write_text("0123456789abcdef\n")
    with pytest.warns(UserWarning, match="MLflow reopen failed"):
        report = evaluate(checkpoint, samples, out, EvaluateSection(gallery_size=0), progress=False)
    assert math.isclose(json.loads(out.metrics.read_text())["miou"], report.metrics["miou"])


def test_a_checkpoint_trained_on_other_classes_is_refused_before_anything_is_written(hand_case, tmp_path):
    checkpoint, samples, out = hand_case
    with pytest.raises(SegpipeError) as info:
        evaluate(checkpoint, samples, out, EvaluateSection(device="cpu"), classes=("background", "lesion"), progress=False)
    message = str(info.value)
    assert message.startswith(f"{checkpoint}: the model was trained on classes ['background', 'lesion', 'other']")
    assert "but base.classes is ['background', 'lesion']" in message
    assert not (tmp_path / "m").exists() and not (tmp_path / "plots").exists()


def test_matching_classes_pass(hand_case):
    checkpoint, samples, out = hand_case
    report = evaluate(checkpoint, samples, out, EvaluateSection(device="cpu"), classes=tuple(CLASSES), progress=False)
    assert report.info["images"] == 2


class DarkIsLesion(nn.Module):
    """Lesion where the pixel is darker than a fixed grey (the sum of its normalised channels below 1.7)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lesion = 1.7 - x.sum(dim=1)
        return torch.stack([torch.zeros_like(lesion), lesion], dim=1)


def test_large_photos_decoded_at_reduced_scale_score_within_half_a_point_at_full_resolution(tmp_path, monkeypatch):
    samples = [make_photo(tmp_path / "data", f"p{i}", (1200, 1600), seed=i) for i in range(3)]
    checkpoint = tiny_checkpoint(tmp_path / "models" / "best.pt", image_size=128)
    monkeypatch.setattr(checkpoint_module, "model_from_checkpoint", lambda ckpt: DarkIsLesion())

    def outputs(name: str) -> EvalOutputs:
        folder = tmp_path / name
        return EvalOutputs(folder / "eval.json", folder / "info.json", folder / "c.csv", folder / "i.csv", folder / "iou.csv", folder / "plots")

    decodes = CountingCalls(evaluate_module.read_image_for)
    monkeypatch.setattr(evaluate_module, "read_image_for", decodes)
    reduced = evaluate(checkpoint, samples, outputs("reduced"), EvaluateSection(gallery_size=0), progress=False)
    assert decodes.calls == 3
    assert decodes.fn(samples[0].image, fit=(128, 128))[0].shape == (150, 200, 3)  # 1/8 of 1200 x 1600
    monkeypatch.setattr(evaluate_module, "read_image_for", lambda path, fit: (read_image(path), (1200, 1600)))
    full = evaluate(checkpoint, samples, outputs("full"), EvaluateSection(gallery_size=0), progress=False)
    reduced, full = reduced.metrics, full.metrics
    assert 0.5 < full["miou"] < 0.99  # the model gets much, not all, of each lesion: the edges decide
    for key in ("miou", "iou_lesion", "dice_lesion", "accuracy"):
        assert abs(reduced[key] - full[key]) < 0.005, key
    # still scored at the masks' full resolution
    pixels = [sum(int(row["gt_pixels"]) for row in read_csv(tmp_path / name / "c.csv")) for name in ("reduced", "full")]
    assert pixels == [3 * 1200 * 1600] * 2
