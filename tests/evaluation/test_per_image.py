"""Per-image Jaccard, Dice, HD95 and surface Dice against hand-computed cases and torchmetrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torchmetrics.functional.segmentation import hausdorff_distance

from segpipe.evaluation.per_image import boundary, class_scores, image_scores, summarize, surface_distances


def square(top: int, left: int, side: int = 10, size: int = 40) -> np.ndarray:
    mask = np.zeros((size, size), bool)
    mask[top : top + side, left : left + side] = True
    return mask


def test_a_square_against_itself_shifted_three_pixels_by_hand():
    # A = rows 10-19 x cols 10-19, B = the same 3 columns to the right. Overlap 10 x 7 = 70,
    # union 130. A's boundary (36 pixels) to B's: top and bottom rows 3, 2, 1 and seven 0s each;
    # left column (8 inner pixels) 3 each (B's left side); right column lies inside B, at 1 2 3 3
    # 3 3 2 1 from B's top or bottom row or its right side 3 columns on. Sorted: fourteen 0,
    # four 1, four 2, fourteen 3; B to A is the mirror. 95th percentile: 3.
    scores = class_scores(square(10, 10), square(10, 13), tolerance=2)
    assert scores.jaccard == pytest.approx(70 / 130)
    assert scores.dice == pytest.approx(140 / 200)
    assert scores.thresholded_jaccard == 0.0  # 0.54 < 0.65
    assert scores.hd95 == pytest.approx(3.0)
    assert scores.nsd == pytest.approx(2 * (14 + 4 + 4) / 72)  # within 2 px: the 0s, 1s and 2s
    assert class_scores(square(10, 10), square(10, 13), tolerance=3).nsd == pytest.approx(1.0)


def test_a_perfect_prediction_scores_one_and_distance_zero():
    scores = class_scores(square(5, 5), square(5, 5), tolerance=0)
    assert (scores.jaccard, scores.dice, scores.thresholded_jaccard, scores.hd95, scores.nsd) == (1, 1, 1, 0, 1)


def test_thresholded_jaccard_keeps_values_from_065_up():
    # 10 x 10 against 10 x 8 inside it: Jaccard 0.8 stays.
    assert class_scores(square(0, 0), square(0, 0, side=10) & (np.arange(40) < 8), 1).thresholded_jaccard == pytest.approx(0.8)


def test_boundary_is_the_ring_of_a_square_and_counts_the_frame():
    assert boundary(square(10, 10)).sum() == 36
    full = np.ones((4, 5), bool)
    assert boundary(full).sum() == 4 * 5 - 2 * 3  # only the frame ring: its interior is 2 x 3


@pytest.mark.parametrize(
    "truth, prediction, expected",
    [
        (np.zeros((8, 8), bool), np.zeros((8, 8), bool), (1.0, 1.0, 1.0)),
        (square(1, 1, 3, 8), np.zeros((8, 8), bool), (0.0, 0.0, 0.0)),
        (np.zeros((8, 8), bool), square(1, 1, 3, 8), (0.0, 0.0, 0.0)),
    ],
    ids=["both-empty", "prediction-empty", "truth-empty"],
)
def test_empty_masks_score_one_when_both_empty_zero_otherwise_and_hd95_is_undefined(truth, prediction, expected):
    scores = class_scores(truth, prediction, tolerance=2)
    assert (scores.jaccard, scores.dice, scores.nsd) == expected
    assert math.isnan(scores.hd95)
    assert (scores.truth_empty, scores.prediction_empty) == (not truth.any(), not prediction.any())


def test_the_largest_surface_distance_is_torchmetrics_hausdorff_distance():
    rng = np.random.default_rng(0)
    for _ in range(5):
        truth = np.zeros((48, 48), bool)
        prediction = np.zeros((48, 48), bool)
        for mask in (truth, prediction):
            for _ in range(3):
                top, left, h, w = rng.integers(2, 30), rng.integers(2, 30), rng.integers(3, 15), rng.integers(3, 15)
                mask[top : top + h, left : left + w] = True
        ours = max(surface_distances(boundary(truth), boundary(prediction)).max(),
                   surface_distances(boundary(prediction), boundary(truth)).max())
        theirs = hausdorff_distance(
            torch.from_numpy(prediction).long()[None], torch.from_numpy(truth).long()[None],
            num_classes=2, input_format="index",
        )
        assert ours == pytest.approx(float(theirs.squeeze()), abs=1e-4)


def test_ignored_pixels_are_neither_truth_nor_prediction():
    target = np.zeros((6, 6), np.uint8)
    target[:, :3] = 255
    target[2:4, 3:5] = 1
    prediction = np.ones((6, 6), np.uint8)  # everywhere class 1, but half of it is ignored
    scores = image_scores(target, prediction, classes=[1], tolerance=1)[1]
    assert scores.jaccard == pytest.approx(4 / 18)  # the 6 x 3 kept half against the 2 x 2 truth


def test_summary_means_leave_out_undefined_hd95_and_count_the_images():
    perfect = class_scores(square(5, 5), square(5, 5), 2)
    shifted = class_scores(square(10, 10), square(10, 13), 2)
    empty = class_scores(np.zeros((40, 40), bool), np.zeros((40, 40), bool), 2)
    missed = class_scores(square(5, 5), np.zeros((40, 40), bool), 2)
    metrics, info = summarize([{"lesion": s} for s in (perfect, shifted, empty, missed)])
    assert metrics["mean_jaccard_lesion"] == pytest.approx((1 + 70 / 130 + 1 + 0) / 4)
    assert metrics["mean_thresholded_jaccard_lesion"] == pytest.approx((1 + 0 + 1 + 0) / 4)
    assert metrics["mean_dice_lesion"] == pytest.approx((1 + 0.7 + 1 + 0) / 4)
    assert metrics["mean_hd95_lesion"] == pytest.approx((0 + 3.0) / 2)
    assert metrics["mean_nsd_lesion"] == pytest.approx((1 + 44 / 72 + 1 + 0) / 4)
    assert metrics["mean_jaccard"] == metrics["mean_jaccard_lesion"]
    assert info["lesion"] == {
        "images": 4, "hd95_images": 2, "both_empty": 1, "truth_empty_only": 0, "prediction_empty_only": 1,
    }


def test_hd95_leaves_out_a_stray_pixel_that_the_maximum_keeps():
    # The prediction is the truth plus one pixel at (35, 35). Its boundary: the truth's 36 + 1.
    # Distances truth -> prediction: 36 zeros; prediction -> truth: 36 zeros and 16 * sqrt(2) to
    # the corner (19, 19). 95th percentile of 37 values (index 34.2): 0. Maximum: 22.63.
    truth = square(10, 10)
    prediction = truth.copy()
    prediction[35, 35] = True
    scores = class_scores(truth, prediction, tolerance=1)
    assert scores.hd95 == 0.0
    assert surface_distances(boundary(prediction), boundary(truth)).max() == pytest.approx(16 * math.sqrt(2))
    assert scores.jaccard == pytest.approx(100 / 101)
    assert scores.nsd == pytest.approx(72 / 73)
