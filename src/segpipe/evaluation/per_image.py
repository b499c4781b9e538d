"""Per-image scores of each foreground class, as lesion-segmentation papers report them.

The pooled scores of `segpipe.metrics` count every pixel of the set once; the ISIC challenges and
most medical papers instead score each image and average the images. For one image and one
foreground class c, with T = ground-truth pixels of c and P = predicted pixels of c (pixels whose
truth is ignore_index are in neither):

    jaccard              |T & P| / |T | P|
    dice                 2 |T & P| / (|T| + |P|)
    thresholded_jaccard  jaccard, or 0 when it is below 0.65 (ISIC 2018 Task 1)
    hd95                 95th percentile Hausdorff distance between the boundaries, in pixels of
                         the mask: max of the two directed 95th percentiles (MONAI's and DeepMind's
                         surface-distance convention)
    nsd                  normalised surface Dice at `tolerance` pixels: the share of both
                         boundaries' pixels lying within `tolerance` of the other boundary

A boundary pixel is a pixel of the mask with a 4-neighbour outside it (the image frame counts as
outside), and a distance is the Euclidean distance between pixel centres.

Empty masks (the MetricsReloaded cases), chosen so that no image is scored by an invented number:

    both T and P empty   jaccard = dice = nsd = 1 (nothing to find, nothing found); hd95 undefined
    only one empty       jaccard = dice = nsd = 0; hd95 undefined (no boundary to measure to)

An undefined hd95 is left out of its mean, and eval_info.json says how many images each mean
covers and how many were empty on either side.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

THRESHOLD = 0.65  # ISIC 2018: an image below this Jaccard counts 0
SCORE_NAMES = ("jaccard", "thresholded_jaccard", "dice", "hd95", "nsd")
_CROSS = ndimage.generate_binary_structure(2, 1)


@dataclass(frozen=True)
class ClassScores:
    """One image's scores of one foreground class (NaN where undefined) and its empty sides."""

    jaccard: float
    dice: float
    hd95: float
    nsd: float
    truth_empty: bool
    prediction_empty: bool

    @property
    def thresholded_jaccard(self) -> float:
        return self.jaccard if self.jaccard >= THRESHOLD else 0.0


def boundary(mask: np.ndarray) -> np.ndarray:
    """The pixels of a boolean (H, W) mask that have a 4-neighbour outside it or lie on the frame."""
    return mask & ~ndimage.binary_erosion(mask, structure=_CROSS, border_value=0)


def surface_distances(edges_from: np.ndarray, edges_to: np.ndarray) -> np.ndarray:
    """For each pixel of `edges_from`, its Euclidean distance to the nearest pixel of `edges_to`."""
    return ndimage.distance_transform_edt(~edges_to)[edges_from]


def class_scores(truth: np.ndarray, prediction: np.ndarray, tolerance: float) -> ClassScores:
    """Score one foreground class of one image: boolean (H, W) truth and prediction."""
    truth_empty, prediction_empty = not truth.any(), not prediction.any()
    if truth_empty or prediction_empty:
        agree = float(truth_empty and prediction_empty)
        return ClassScores(agree, agree, math.nan, agree, truth_empty, prediction_empty)
    overlap = np.count_nonzero(truth & prediction)
    total = np.count_nonzero(truth) + np.count_nonzero(prediction)
    edges_t, edges_p = boundary(truth), boundary(prediction)
    t_to_p, p_to_t = surface_distances(edges_t, edges_p), surface_distances(edges_p, edges_t)
    hd95 = max(np.percentile(t_to_p, 95), np.percentile(p_to_t, 95))
    within = np.count_nonzero(t_to_p <= tolerance) + np.count_nonzero(p_to_t <= tolerance)
    return ClassScores(
        jaccard=overlap / (total - overlap),
        dice=2 * overlap / total,
        hd95=float(hd95),
        nsd=within / (t_to_p.size + p_to_t.size),
        truth_empty=False,
        prediction_empty=False,
    )


def image_scores(
    target: np.ndarray, prediction: np.ndarray, classes: Sequence[int], tolerance: float, ignore_index: int = 255
) -> dict[int, ClassScores]:
    """Scores of each class index in `classes` for one image: target and prediction (H, W) class ids."""
    keep = target != ignore_index
    return {c: class_scores(target == c, (prediction == c) & keep, tolerance) for c in classes}


def summarize(per_image: Sequence[dict[str, ClassScores]]) -> tuple[dict[str, float | None], dict]:
    """Means over images of each class's scores, and what they cover.

    Args:
        per_image: one {class name: ClassScores} per image.
    Returns:
        (metrics, info): metrics has mean_<score>_<class> for every score in SCORE_NAMES and, over
        the foreground classes, mean_<score> (the mean of the class means; None where undefined);
        info has, per class, how many images each mean covers and how many were empty.
    """
    names = list(per_image[0]) if per_image else []
    metrics: dict[str, float | None] = {}
    covered: dict[str, dict[str, int]] = {}
    for name in names:
        scores = [image[name] for image in per_image]
        covered[name] = {
            "images": len(scores),
            "hd95_images": sum(not math.isnan(s.hd95) for s in scores),
            "both_empty": sum(s.truth_empty and s.prediction_empty for s in scores),
            "truth_empty_only": sum(s.truth_empty and not s.prediction_empty for s in scores),
            "prediction_empty_only": sum(s.prediction_empty and not s.truth_empty for s in scores),
        }
        for score in SCORE_NAMES:
            metrics[f"mean_{score}_{name}"] = _nanmean([getattr(s, score) for s in scores])
    for score in SCORE_NAMES:
        class_means = [metrics[f"mean_{score}_{name}"] for name in names]
        metrics[f"mean_{score}"] = _nanmean([math.nan if v is None else v for v in class_means])
    return metrics, covered


def _nanmean(values: Sequence[float]) -> float | None:
    defined = [v for v in values if not math.isnan(v)]
    return float(np.mean(defined)) if defined else None
