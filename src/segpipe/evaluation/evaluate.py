"""The evaluate stage: score a checkpoint on the validation images at their original resolution.

Each image goes through `Predictor` (the same letterbox, model and restore as `predict`), the
argmax is compared with the ground-truth mask at the mask's own size, and one `ConfusionMatrix`
collects every pixel of the set (255 ignored), so the means are over pixels of the whole set, not
means of per-image means. Outputs:

    metrics JSON     flat SegmentationScores.as_dict keys + "images" (null where undefined)
    per-class CSV    class, iou, pixel_accuracy, precision, recall, dice, gt_pixels, pred_pixels, present
    per-image CSV    id, iou_<class>..., dice_<class>..., miou (blank where undefined)
    IoU plot data    class, iou (DVC bar_horizontal)
    plots_dir        class_scores.png, confusion_matrix.png, gallery.png

and the same metric names are logged to the training run in MLflow when its id is known.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from segpipe.layout import Sample
from segpipe.config import EvaluateSection
from segpipe.errors import SegpipeError
from segpipe.figures import plt, save_figure
from segpipe.imageio import atomic_write_text, read_class_mask, read_image, read_image_for
from segpipe.inference.predictor import Predictor, class_map
from segpipe.metrics import ConfusionMatrix, SegmentationScores, image_scores
from segpipe.palette import colour_overlay
from segpipe.runtime import resolve_device
from segpipe.tracking import PER_IMAGE_ARTIFACT, RUN_ID_FILE, Tracker


log = logging.getLogger(__name__)

PER_CLASS_FIELDS = ("class", "iou", "pixel_accuracy", "precision", "recall", "dice", "gt_pixels", "pred_pixels", "present")
# Panels of the class-score figure: (per_class key, title); pixel accuracy of a class is its recall.
SCORE_PANELS = (("iou", "IoU"), ("recall", "Pixel accuracy"), ("precision", "Precision"), ("recall", "Recall"))


@dataclass(frozen=True)
class EvalOutputs:
    """Where the evaluate stage writes (each path declared in dvc.yaml)."""

    metrics: Path
    per_class: Path
    per_image: Path
    iou_plot: Path
    plots_dir: Path


@dataclass(frozen=True)
class ImageResult:
    """One validation image's scores (its own pixels only)."""

    id: str
    scores: SegmentationScores

    @property
    def miou(self) -> float:
        return self.scores.miou


def evaluate(
    checkpoint: Path,
    samples: Sequence[Sample],
    out: EvalOutputs,
    config: EvaluateSection = EvaluateSection(),
    *,
    progress: bool = True,
) -> dict:
    """Score `checkpoint` on `samples` and write every output in `out`; returns the metrics dict.

    Args:
        checkpoint: the trained model (best.pt); the MLflow run id is read from the file
            `mlflow_run_id.txt` beside it.
        samples: the (image, mask) pairs to score (the validation split).
        out: output paths.
        config: params.yaml's evaluate section (device, images per forward pass, gallery size).
        progress: show a progress bar.
    """
    if not samples:
        raise SegpipeError("no images to evaluate: the validation list is empty; check the split stage's val.txt")
    predictor = Predictor(checkpoint, resolve_device(config.device))
    batch_size = config.batch_size
    classes = predictor.classes
    matrix = ConfusionMatrix(len(classes))
    results: list[ImageResult] = []
    with tqdm(total=len(samples), desc="evaluate", unit="img", disable=not progress) as bar:
        for start in range(0, len(samples), batch_size):
            chunk = samples[start : start + batch_size]
            # Large photos are decoded no larger than the canvas needs; scoring stays at the mask's size.
            pairs = [load_pair(sample, fit=predictor.canvas) for sample in chunk]
            probs = predictor.predict_batch([image for image, _ in pairs], full_sizes=[mask.shape for _, mask in pairs])
            for sample, (_, mask), p in zip(chunk, pairs, probs):
                labels = class_map(p)
                try:
                    matrix.update(mask, labels)
                except SegpipeError as exc:  # the message names the bad value; add the file
                    raise SegpipeError(f"{sample.mask}: {exc}") from None
                results.append(ImageResult(sample.id, image_scores(mask, labels, len(classes))))
            bar.update(len(chunk))
    scores = matrix.compute()
    metrics = {**scores.as_dict(classes), "images": len(samples)}
    # allow_nan=False: a NaN that slipped past as_dict fails here instead of writing invalid JSON.
    atomic_write_text(out.metrics, json.dumps(metrics, indent=2, allow_nan=False) + "\n")
    atomic_write_text(out.per_class, per_class_csv(scores, classes))
    atomic_write_text(out.per_image, per_image_csv(results, classes))
    atomic_write_text(out.iou_plot, iou_plot_csv(scores, classes))
    figures = write_figures(predictor, scores, samples, results, out.plots_dir, config.gallery_size)
    log_to_training_run(Path(checkpoint).parent / RUN_ID_FILE, metrics, out, figures)
    return metrics


def load_pair(sample: Sample, fit: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A sample's image and (H, W) class mask; the image is (H, W, 3), or with `fit` (the
    predictor's canvas) possibly decoded at reduced scale (`read_image_for`). The full image
    must be the mask's size."""
    if fit is None:
        image = read_image(sample.image)
        full_hw = image.shape[:2]
    else:
        image, full_hw = read_image_for(sample.image, fit=fit)
    mask = read_class_mask(sample.mask)
    if tuple(full_hw) != mask.shape:
        raise SegpipeError(
            f"{sample.mask}: mask of size {mask.shape[0]}x{mask.shape[1]} does not match its image "
            f"{sample.image} of size {full_hw[0]}x{full_hw[1]}; re-run the convert stage"
        )
    return image, mask


def absent_report(metrics: dict) -> str:
    """One line for people: which classes were absent and so left out of the means."""
    absent = metrics["absent_classes"]
    if not absent:
        return "every class occurs in the ground truth or the prediction"
    return f"absent from ground truth and prediction, left out of the means: {', '.join(absent)}"


def per_class_csv(scores: SegmentationScores, classes: Sequence[str]) -> str:
    """The per-class table: one row per class, blank cells where a score is undefined."""
    gt_pixels = scores.confusion.sum(axis=1)
    pred_pixels = scores.confusion.sum(axis=0)
    rows = []
    for index, name in enumerate(classes):
        values = {key: scores.per_class[key][index] for key in ("iou", "precision", "recall", "dice")}
        rows.append({
            "class": name,
            "iou": _cell(values["iou"]),
            "pixel_accuracy": _cell(values["recall"]),
            "precision": _cell(values["precision"]),
            "recall": _cell(values["recall"]),
            "dice": _cell(values["dice"]),
            "gt_pixels": int(gt_pixels[index]),
            "pred_pixels": int(pred_pixels[index]),
            "present": bool(scores.present[index]),
        })
    return _csv(PER_CLASS_FIELDS, rows)


def per_image_csv(results: Sequence[ImageResult], classes: Sequence[str]) -> str:
    """One row per image: id, IoU and Dice of every class, and the mean IoU over its present classes."""
    fields = ("id", *(f"iou_{c}" for c in classes), *(f"dice_{c}" for c in classes), "miou")
    rows = []
    for result in results:
        row = {"id": result.id, "miou": _cell(result.miou)}
        for index, name in enumerate(classes):
            row[f"iou_{name}"] = _cell(result.scores.per_class["iou"][index])
            row[f"dice_{name}"] = _cell(result.scores.per_class["dice"][index])
        rows.append(row)
    return _csv(fields, rows)


def iou_plot_csv(scores: SegmentationScores, classes: Sequence[str]) -> str:
    """`class, iou` rows for DVC's bar_horizontal plot; absent classes have no IoU and no bar."""
    rows = [
        {"class": name, "iou": _cell(scores.per_class["iou"][index])}
        for index, name in enumerate(classes)
        if scores.present[index]
    ]
    return _csv(("class", "iou"), rows)


def _cell(value: float) -> str:
    """A CSV cell: blank for undefined (NaN), else the value to 6 decimals."""
    return "" if math.isnan(value) else f"{value:.6f}"


def _csv(fields: Sequence[str], rows: Sequence[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(fields), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def write_figures(
    predictor: Predictor,
    scores: SegmentationScores,
    samples: Sequence[Sample],
    results: Sequence[ImageResult],
    plots_dir: Path,
    gallery_size: int,
) -> list[Path]:
    """class_scores.png, confusion_matrix.png and gallery.png in `plots_dir`; returns their paths."""
    plots_dir = Path(plots_dir)
    plots_dir.mkdir(parents=True, exist_ok=True)
    paths = [
        plot_class_scores(scores, predictor.classes, plots_dir / "class_scores.png"),
        plot_confusion(scores, predictor.classes, plots_dir / "confusion_matrix.png"),
    ]
    if gallery_size:
        paths.append(plot_gallery(predictor, samples, results, gallery_size, plots_dir / "gallery.png"))
    return paths


def plot_class_scores(scores: SegmentationScores, classes: Sequence[str], path: Path) -> Path:
    """Four bar panels (IoU, pixel accuracy, precision, recall per class), like the paper's figure 5."""
    figure, axes = plt.subplots(1, 4, figsize=(14, 3.5), sharey=True)
    positions = np.arange(len(classes))
    for axis, (key, title) in zip(axes, SCORE_PANELS):
        values = np.nan_to_num(scores.per_class[key], nan=0.0)  # undefined drawn as no bar
        bars = axis.bar(positions, values, color="tab:blue")
        axis.bar_label(bars, labels=[_label(v) for v in scores.per_class[key]], fontsize=8)
        axis.set(title=title, ylim=(0, 1.1), xticks=positions)
        axis.set_xticklabels(classes, rotation=45, ha="right")
        axis.grid(axis="y", alpha=0.3)
    return save_figure(figure, path)


def plot_confusion(scores: SegmentationScores, classes: Sequence[str], path: Path) -> Path:
    """The confusion matrix with each ground-truth row divided by its pixel count (rows sum to 1)."""
    counts = scores.confusion.astype(np.float64)
    totals = counts.sum(axis=1, keepdims=True)
    normalised = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    side = 2.5 + 0.6 * len(classes)
    figure, axis = plt.subplots(figsize=(side + 1, side))
    image = axis.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
    for (row, col), value in np.ndenumerate(normalised):
        axis.text(col, row, f"{value:.2f}", ha="center", va="center", color="white" if value > 0.5 else "black", fontsize=8)
    ticks = np.arange(len(classes))
    axis.set(xticks=ticks, yticks=ticks, xlabel="predicted", ylabel="ground truth", title="Confusion (row-normalised)")
    axis.set_xticklabels(classes, rotation=45, ha="right")
    axis.set_yticklabels(classes)
    figure.colorbar(image, ax=axis, fraction=0.046)
    return save_figure(figure, path)


def plot_gallery(
    predictor: Predictor, samples: Sequence[Sample], results: Sequence[ImageResult], k: int, path: Path
) -> Path:
    """Image / ground truth / prediction overlays of the k best and k worst images by mean IoU.

    The chosen images are predicted again rather than kept from the scoring pass, so memory does
    not grow with the size of the validation set.
    """
    ranked = sorted(range(len(results)), key=lambda i: (_sort_key(results[i].miou), results[i].id), reverse=True)
    chosen = [(i, "best") for i in ranked[:k]] + [(i, "worst") for i in ranked[::-1][:k] if i not in ranked[:k]]
    figure, axes = plt.subplots(len(chosen), 3, figsize=(9, 3 * len(chosen)), squeeze=False)
    for row, (index, which) in zip(axes, chosen):
        image, mask = load_pair(samples[index])
        labels = class_map(predictor.predict_probs(image))
        truth = np.where(mask == 255, 0, mask).astype(np.uint8)  # ignored pixels shown as background
        panels = (image, colour_overlay(image, truth, predictor.num_classes), colour_overlay(image, labels, predictor.num_classes))
        for axis, panel, title in zip(row, panels, ("image", "ground truth", "prediction")):
            axis.imshow(panel)
            axis.set_axis_off()
            axis.set_title(title, fontsize=9)
        row[0].set_title(f"{which}: {results[index].id} (mIoU {_label(results[index].miou)})", fontsize=9)
    return save_figure(figure, path)


def _sort_key(miou: float) -> float:
    # An image with no scorable pixel ranks below every scored one.
    return -1.0 if math.isnan(miou) else miou


def _label(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.2f}"



def log_to_training_run(run_id_file: Path, metrics: dict, out: EvalOutputs, figures: Sequence[Path]) -> bool:
    """Add the evaluation metrics, CSVs and figures to the MLflow run that trained the checkpoint.

    The run id comes from `run_id_file` (written by the train stage beside the checkpoint). A
    missing file is skipped quietly; an MLflow failure is one warning, never an error, because the
    metrics files are already written. The per-image CSV goes under a fixed name
    (`PER_IMAGE_ARTIFACT`) so `compare` can find it. Returns whether the run was updated.
    """
    if not run_id_file.is_file():
        log.info("no %s beside the checkpoint: evaluation metrics not logged to MLflow", run_id_file.name)
        return False
    tracker = Tracker()
    tracker.reopen(run_id_file.read_text(encoding="utf-8").strip())
    tracker.log_metrics(metrics, undefined_as_nan=True)
    folder, per_image_name = PER_IMAGE_ARTIFACT.split("/")
    tracker.log_artifact(out.per_image, folder, name=per_image_name)
    for path in (out.metrics, out.per_class, *figures):
        tracker.log_artifact(path, folder)
    tracker.end()
    return tracker.enabled
