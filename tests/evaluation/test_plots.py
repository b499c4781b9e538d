"""The evaluate stage's figures: what the class-score panels show, and which images the gallery picks."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from segpipe.evaluation.plots import (
    SCORE_PANELS,
    GalleryRow,
    gallery_choice,
    gallery_title,
    plot_class_scores,
    plot_gallery,
)
from segpipe.metrics import image_scores

IDS = [f"img{i}" for i in range(10)]
MIOUS = [0.5, 0.9, 0.1, 0.7, 0.3, 0.8, math.nan, 0.6, 0.2, 0.4]


def test_class_scores_show_iou_pixel_accuracy_precision_and_dice_once_each():
    assert [key for key, _ in SCORE_PANELS] == ["iou", "recall", "precision", "dice"]
    assert [title for _, title in SCORE_PANELS] == ["IoU", "Pixel accuracy", "Precision", "Dice"]


def test_class_scores_figure_fits_a_page(tmp_path):
    scores = image_scores(np.array([[0, 1], [1, 2]]), np.array([[0, 1], [2, 2]]), num_classes=6)
    path = plot_class_scores(scores, ["unlabeled", "building", "land", "road", "vegetation", "water"], tmp_path / "c.png")
    width, height = Image.open(path).size
    assert width <= 800 and height < width


def test_gallery_names_the_k_best_and_k_worst_when_there_are_more_than_2k_images():
    chosen = gallery_choice(IDS, MIOUS, 2)
    assert chosen == [(1, "best"), (5, "best"), (2, "worst"), (6, "worst")]  # NaN ranks last


def test_gallery_shows_every_image_ranked_without_best_or_worst_when_there_are_few():
    chosen = gallery_choice(IDS[:4], MIOUS[:4], 2)
    assert chosen == [(1, ""), (3, ""), (0, ""), (2, "")]
    assert gallery_title("", "img1", 0.9) == "img1 (mIoU 0.90)"
    assert gallery_title("worst", "img6", math.nan) == "worst: img6 (mIoU n/a)"


def test_gallery_figure_has_a_row_per_image(tmp_path):
    image = np.zeros((16, 24, 3), np.uint8)
    mask = np.zeros((16, 24), np.uint8)
    rows = [GalleryRow(f"img{i}", image, mask, mask) for i in range(3)]
    width, height = Image.open(plot_gallery(rows, 2, tmp_path / "g.png")).size
    assert width <= 900 and height > 3 * 150


def test_the_gallery_has_a_legend_of_the_class_colours(tmp_path, monkeypatch):
    import segpipe.evaluation.plots as plots

    drawn = {}
    monkeypatch.setattr(plots, "save_figure", lambda figure, path: drawn.setdefault("figure", figure))
    image, mask = np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), np.uint8)
    classes = ["unlabeled", "building", "land", "road", "vegetation", "water"]
    plot_gallery([GalleryRow("t", image, mask, mask)], 6, tmp_path / "g.png", classes)
    legends = {tuple(t.get_text() for t in legend.get_texts()): legend for legend in drawn["figure"].legends}
    class_legend = legends[tuple(classes[1:])]  # background is not coloured in the panels
    colours = [tuple(np.round(np.array(h.get_facecolor()[:3]) * 255).astype(int)) for h in class_legend.legend_handles]
    assert colours[0] == (128, 0, 0) and colours[2] == (128, 128, 0)  # VOC colours of ids 1 and 3
