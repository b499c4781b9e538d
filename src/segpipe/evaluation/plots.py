"""The evaluate stage's figures, drawn from scores and arrays it has already computed.

    class_scores.png      IoU, pixel accuracy, precision and Dice per class (the paper's figure 5)
    confusion_matrix.png  the confusion matrix, each ground-truth row divided by its pixel count
    gallery.png           image, ground truth, prediction and its errors for chosen images
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.patches import Patch

from segpipe.figures import plt, save_figure
from segpipe.metrics import SegmentationScores
from segpipe.palette import ERROR_COLOURS, class_colours, colour_overlay, error_overlay

# Panels of the class-score figure: (per_class key, title); a class's pixel accuracy is its recall.
SCORE_PANELS = (("iou", "IoU"), ("recall", "Pixel accuracy"), ("precision", "Precision"), ("dice", "Dice"))


def plot_class_scores(scores: SegmentationScores, classes: Sequence[str], path: Path) -> Path:
    """Four panels of horizontal bars, one bar per class, sharing the class names on the left."""
    height = 1.2 + 0.35 * len(classes)
    figure, axes = plt.subplots(1, len(SCORE_PANELS), figsize=(8, height), sharey=True)
    positions = np.arange(len(classes))
    for axis, (key, title) in zip(axes, SCORE_PANELS):
        values = scores.per_class[key]
        bars = axis.barh(positions, np.nan_to_num(values, nan=0.0), color="tab:blue", height=0.6)
        # Three decimals: on the bars 0.995 and 0.977 look alike, so the numbers must tell them apart.
        axis.bar_label(bars, labels=[_label(v, 3) for v in values], padding=2, fontsize=9)  # undefined: "n/a"
        axis.set(title=title, xlim=(0, 1.35), xticks=[0, 0.5, 1])
        axis.spines[["top", "right"]].set_visible(False)
    axes[0].set_yticks(positions, classes)
    axes[0].invert_yaxis()  # class 0 at the top, as in params.yaml
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
        axis.text(col, row, f"{value:.2f}", ha="center", va="center", color="white" if value > 0.5 else "black",
                  fontsize=10 if len(classes) <= 8 else 8)
    ticks = np.arange(len(classes))
    axis.set(xticks=ticks, yticks=ticks, xlabel="predicted", ylabel="ground truth", title="Confusion (row-normalised)")
    axis.set_xticklabels(classes, rotation=45, ha="right")
    axis.set_yticklabels(classes)
    figure.colorbar(image, ax=axis, fraction=0.046)
    return save_figure(figure, path)


@dataclass(frozen=True)
class GalleryRow:
    """One image of the gallery: (H, W, 3) image, (H, W) truth (255 ignored) and predicted class ids."""

    title: str
    image: np.ndarray
    truth: np.ndarray
    prediction: np.ndarray


def gallery_choice(ids: Sequence[str], mious: Sequence[float], k: int) -> list[tuple[int, str]]:
    """(index, label) of the images to show, best first.

    With more than 2k images, the k best and the k worst by mean IoU, labelled "best" and "worst";
    with fewer, those words would name the same images or nearly all of them, so every image is
    shown, ranked, without them. An image with no scorable pixel (NaN) ranks last.
    """
    ranked = sorted(range(len(ids)), key=lambda i: (_sort_key(mious[i]), ids[i]), reverse=True)
    if len(ranked) <= 2 * k:
        return [(i, "") for i in ranked]
    return [(i, "best") for i in ranked[:k]] + [(i, "worst") for i in ranked[-k:]]


def gallery_title(label: str, image_id: str, miou: float) -> str:
    return f"{label + ': ' if label else ''}{image_id} (mIoU {_label(miou)})"


def plot_gallery(rows: Sequence[GalleryRow], num_classes: int, path: Path, classes: Sequence[str] | None = None) -> Path:
    """Per row: the image, the ground truth and the prediction in class colours, and the prediction's
    errors in `ERROR_COLOURS` over the gray image, with a legend of the error colours on top and,
    given the class names, one of the class colours below (background is not coloured)."""
    figure, axes = plt.subplots(
        len(rows), 4, figsize=(9, 0.5 + 2.1 * len(rows)), squeeze=False, layout="constrained"
    )
    for axes_row, row in zip(axes, rows):
        truth = np.where(row.truth == 255, 0, row.truth).astype(np.uint8)  # ignored pixels drawn as background
        panels = (
            row.image,
            colour_overlay(row.image, truth, num_classes),
            colour_overlay(row.image, row.prediction, num_classes),
            error_overlay(row.image, row.truth, row.prediction),
        )
        for axis, panel, title in zip(axes_row, panels, (row.title, "ground truth", "prediction", "errors")):
            axis.imshow(panel)
            axis.set_axis_off()
            axis.set_title(title, fontsize=9)
    kinds = [name for name in ERROR_COLOURS if num_classes > 2 or name != "wrong class"]
    handles = [Patch(color=np.array(ERROR_COLOURS[name]) / 255, label=name) for name in kinds]
    figure.legend(handles=handles, loc="outside upper right", ncol=len(handles), fontsize=9, frameon=False)
    if classes:
        colours = class_colours(num_classes)
        patches = [Patch(color=colours[i] / 255, label=name) for i, name in enumerate(classes) if i > 0]
        figure.legend(handles=patches, loc="outside lower center", ncol=min(len(patches), 6), fontsize=9, frameon=False)
    return save_figure(figure, path)


def _sort_key(miou: float) -> float:
    # An image with no scorable pixel ranks below every scored one.
    return -1.0 if math.isnan(miou) else miou


def _label(value: float, decimals: int = 2) -> str:
    return "n/a" if math.isnan(value) else f"{value:.{decimals}f}"
