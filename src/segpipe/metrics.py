"""The one segmentation metric implementation, used by training validation and by `evaluate`.

Everything is derived from a (C, C) confusion matrix M accumulated over all evaluated pixels,
rows = ground truth, columns = prediction; pixels whose ground truth is `ignore_index`
(letterbox padding, unlabelled areas) are left out. For class c:

    TP_c = M[c, c]
    FP_c = sum_r M[r, c] - TP_c      (predicted c, truly something else)
    FN_c = sum_k M[c, k] - TP_c      (truly c, predicted something else)

    IoU_c       = TP_c / (TP_c + FP_c + FN_c)
    precision_c = TP_c / (TP_c + FP_c)
    recall_c    = TP_c / (TP_c + FN_c)        = per-class pixel accuracy PA_c
    dice_c      = 2 TP_c / (2 TP_c + FP_c + FN_c)   (= F1_c)
    accuracy    = trace(M) / sum(M)           (overall pixel accuracy)

A class is *absent* when TP_c + FP_c + FN_c == 0: it occurs neither in the ground truth nor in
the prediction. All its values are NaN and it is left out of every mean; absent classes are
reported by name, never scored as 0 or 1.

A ratio whose denominator is 0 is NaN (undefined), not 0. So a class that is predicted but has
no ground-truth pixels has IoU 0, precision 0 and recall NaN; a class with ground truth that is
never predicted has recall 0 and precision NaN. The means are NaN-means over present classes, so

    mIoU, mDice           average over classes in the ground truth or the prediction,
    mPA (the mean recall) average over classes with ground-truth pixels,
    mPrecision            average over classes with predicted pixels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from segpipe.errors import SegpipeError

METRIC_NAMES = ("iou", "precision", "recall", "dice")


class LabelError(SegpipeError, ValueError):
    """A label or predicted class index outside [0, num_classes) that is not ignore_index."""


@dataclass(frozen=True, eq=False)
class SegmentationScores:
    """Per-class scores and their means, computed from one confusion matrix.

    Attributes:
        per_class: "iou", "precision", "recall", "dice" -> float array (C,), NaN where undefined.
        present: bool array (C,): the class occurs in the ground truth or the prediction.
        accuracy: overall pixel accuracy, NaN if no pixel was counted.
        confusion: the (C, C) int64 matrix the scores come from (rows truth, cols prediction).
    """

    per_class: dict[str, np.ndarray]
    present: np.ndarray
    accuracy: float
    confusion: np.ndarray

    @classmethod
    def from_confusion(cls, matrix: np.ndarray) -> SegmentationScores:
        """Score a (C, C) confusion matrix, rows = ground truth, columns = prediction."""
        matrix = np.array(matrix, dtype=np.int64)
        if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
            raise SegpipeError(f"a confusion matrix must be square (C, C), got shape {matrix.shape}")
        tp = np.diag(matrix).astype(np.float64)
        fp = matrix.sum(axis=0) - tp
        fn = matrix.sum(axis=1) - tp
        per_class = {
            "iou": _ratio(tp, tp + fp + fn),
            "precision": _ratio(tp, tp + fp),
            "recall": _ratio(tp, tp + fn),
            "dice": _ratio(2 * tp, 2 * tp + fp + fn),
        }
        total = matrix.sum()
        accuracy = float(np.trace(matrix) / total) if total > 0 else math.nan
        for values in (*per_class.values(), matrix):
            values.setflags(write=False)
        present = (tp + fp + fn) > 0
        present.setflags(write=False)
        return cls(per_class=per_class, present=present, accuracy=accuracy, confusion=matrix)

    @property
    def num_classes(self) -> int:
        return len(self.present)

    def mean(self, name: str) -> float:
        """NaN-mean of one per-class metric over present classes; NaN if no class has a value."""
        if name not in self.per_class:
            raise SegpipeError(f"unknown metric {name!r}; choose one of {', '.join(METRIC_NAMES)}")
        values = self.per_class[name][self.present]
        values = values[~np.isnan(values)]
        return float(values.mean()) if values.size else math.nan

    @property
    def miou(self) -> float:
        return self.mean("iou")

    @property
    def mpa(self) -> float:
        """Mean per-class pixel accuracy (the first paper's mPA), which is the mean recall."""
        return self.mean("recall")

    @property
    def mprecision(self) -> float:
        return self.mean("precision")

    @property
    def mdice(self) -> float:
        return self.mean("dice")

    def as_dict(self, class_names: Sequence[str]) -> dict[str, float | None | list[str]]:
        """Flat, JSON-ready scores with stable keys.

        Keys: miou, mpa, mprecision, mdice, accuracy; per class iou_<name>, pa_<name> (pixel
        accuracy, which is recall: one name for one number), precision_<name>, dice_<name>; and
        absent_classes, the list of class names that occur in neither ground truth nor
        prediction. Every undefined value (an absent class, pixel accuracy of a class without
        ground truth, ...) is None, which JSON writes as null.
        """
        if len(class_names) != self.num_classes:
            raise SegpipeError(
                f"got {len(class_names)} class names for {self.num_classes} classes: {list(class_names)}"
            )
        scores: dict[str, float | None | list[str]] = {
            "miou": _or_none(self.miou),
            "mpa": _or_none(self.mpa),
            "mprecision": _or_none(self.mprecision),
            "mdice": _or_none(self.mdice),
            "accuracy": _or_none(self.accuracy),
        }
        for prefix, name in (("iou", "iou"), ("pa", "recall"), ("precision", "precision"), ("dice", "dice")):
            for index, class_name in enumerate(class_names):
                scores[f"{prefix}_{class_name}"] = _or_none(self.per_class[name][index])
        scores["absent_classes"] = [name for name, present in zip(class_names, self.present) if not present]
        return scores


class ConfusionMatrix:
    """Accumulates a (C, C) int64 confusion matrix (rows = ground truth, cols = prediction),
    ignoring pixels labelled ignore_index.

    Counting runs in numpy (a bincount over truth * C + prediction); torch tensors, on any
    device, are copied to the host first.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        if num_classes < 1:
            raise SegpipeError(f"num_classes must be at least 1, got {num_classes}")
        if 0 <= ignore_index < num_classes:
            raise SegpipeError(
                f"ignore_index {ignore_index} is a class index (num_classes={num_classes}); "
                "use a value outside [0, num_classes), e.g. 255"
            )
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self._matrix = np.zeros((num_classes, num_classes), dtype=np.int64)

    @property
    def matrix(self) -> np.ndarray:
        """A copy of the (C, C) counts, rows = ground truth, columns = prediction."""
        return self._matrix.copy()

    def reset(self) -> None:
        self._matrix[...] = 0

    def update(self, target: np.ndarray | torch.Tensor, prediction: np.ndarray | torch.Tensor) -> None:
        """Count one batch of pixels.

        Args:
            target: integer ground-truth labels of any shape, e.g. (B, H, W); ignore_index is skipped.
            prediction: integer predicted classes of the same shape (take argmax over C first).
        Raises:
            LabelError (a ValueError) naming the first label or prediction outside [0, C).
        """
        target = _as_label_array(target, "target")
        prediction = _as_label_array(prediction, "prediction")
        if target.shape != prediction.shape:
            raise SegpipeError(
                f"target shape {target.shape} and prediction shape {prediction.shape} differ; "
                "pass class indices (argmax over the class axis), not logits"
            )
        target, prediction = target.ravel(), prediction.ravel()
        keep = target != self.ignore_index
        if not keep.all():
            target, prediction = target[keep], prediction[keep]
        self._check_range(target, "ground-truth label", "check the class list in params.yaml against the masks")
        self._check_range(prediction, "predicted class", "the model has a different number of classes")
        # One bincount over the flat index truth * C + prediction fills the whole matrix.
        index = target.astype(np.intp) * self.num_classes + prediction
        counts = np.bincount(index, minlength=self.num_classes**2)
        self._matrix += counts.reshape(self.num_classes, self.num_classes)

    def merge(self, other: ConfusionMatrix) -> None:
        """Add the counts of another matrix of the same classes (e.g. from another worker)."""
        if (other.num_classes, other.ignore_index) != (self.num_classes, self.ignore_index):
            raise SegpipeError(
                f"cannot merge a confusion matrix of {other.num_classes} classes (ignore_index "
                f"{other.ignore_index}) into one of {self.num_classes} (ignore_index {self.ignore_index})"
            )
        self._matrix += other._matrix

    def compute(self) -> SegmentationScores:
        return SegmentationScores.from_confusion(self._matrix)

    def _check_range(self, labels: np.ndarray, what: str, hint: str) -> None:
        if labels.size == 0 or (labels.min() >= 0 and labels.max() < self.num_classes):
            return
        values = np.unique(labels[(labels < 0) | (labels >= self.num_classes)]).tolist()
        raise LabelError(
            f"{what} {values[0]} is outside [0, {self.num_classes}) and is not ignore_index "
            f"{self.ignore_index} (bad values: {values[:10]}); {hint}"
        )


def image_scores(
    target: np.ndarray | torch.Tensor,
    prediction: np.ndarray | torch.Tensor,
    num_classes: int,
    ignore_index: int = 255,
) -> SegmentationScores:
    """Scores of a single image (or any one group of pixels)."""
    matrix = ConfusionMatrix(num_classes, ignore_index)
    matrix.update(target, prediction)
    return matrix.compute()


def _as_label_array(labels: np.ndarray | torch.Tensor, what: str) -> np.ndarray:
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    labels = np.asarray(labels)
    if labels.dtype == np.bool_:
        labels = labels.astype(np.uint8)
    if not np.issubdtype(labels.dtype, np.integer):
        raise SegpipeError(
            f"{what} must hold integer class indices, got {labels.dtype}; take the argmax over classes first"
        )
    return labels


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    out = np.full(numerator.shape, np.nan)
    np.divide(numerator, denominator, out=out, where=denominator > 0)
    return out


def _or_none(value: float) -> float | None:
    return None if math.isnan(value) else float(value)
