import json
import math

import numpy as np
import pytest
import torch
from torchmetrics.classification import (
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MulticlassJaccardIndex,
    MulticlassPrecision,
    MulticlassRecall,
)

from segpipe.errors import SegpipeError
from segpipe.metrics import ConfusionMatrix, LabelError, SegmentationScores, image_scores

# 3 classes; the two 255 pixels in the bottom-right corner are ignored.
TARGET = np.array(
    [
        [0, 0, 1, 1],
        [0, 0, 1, 1],
        [2, 2, 2, 2],
        [2, 2, 255, 255],
    ],
    dtype=np.uint8,
)
PREDICTION = np.array(
    [
        [0, 0, 1, 0],
        [0, 1, 1, 1],
        [2, 2, 2, 1],
        [2, 2, 0, 2],
    ],
    dtype=np.uint8,
)
# Rows = truth, columns = prediction, over the 14 labelled pixels:
#   truth 0 at (0,0) (0,1) (1,0) (1,1) -> predicted 0 0 0 1          -> [3, 1, 0]
#   truth 1 at (0,2) (0,3) (1,2) (1,3) -> predicted 1 0 1 1          -> [1, 3, 0]
#   truth 2 at (2,0..3) (3,0) (3,1)    -> predicted 2 2 2 1 2 2      -> [0, 1, 5]
EXPECTED_MATRIX = np.array([[3, 1, 0], [1, 3, 0], [0, 1, 5]])
# class 0: TP 3, FP 1 (col 4 - 3), FN 1 (row 4 - 3): IoU 3/5, P 3/4, R 3/4, Dice 6/8
# class 1: TP 3, FP 2 (col 5 - 3), FN 1 (row 4 - 3): IoU 3/6, P 3/5, R 3/4, Dice 6/9
# class 2: TP 5, FP 0 (col 5 - 5), FN 1 (row 6 - 5): IoU 5/6, P 5/5, R 5/6, Dice 10/11
EXPECTED = {
    "iou": [3 / 5, 3 / 6, 5 / 6],
    "precision": [3 / 4, 3 / 5, 1.0],
    "recall": [3 / 4, 3 / 4, 5 / 6],
    "dice": [6 / 8, 6 / 9, 10 / 11],
}


def test_hand_computed_4x4_case():
    scores = image_scores(TARGET, PREDICTION, num_classes=3)
    np.testing.assert_array_equal(scores.confusion, EXPECTED_MATRIX)
    for name, values in EXPECTED.items():
        np.testing.assert_allclose(scores.per_class[name], values, err_msg=name)
    assert scores.accuracy == pytest.approx(11 / 14)  # trace 3 + 3 + 5 over 14 pixels
    assert scores.miou == pytest.approx((3 / 5 + 3 / 6 + 5 / 6) / 3)
    assert scores.mpa == pytest.approx((3 / 4 + 3 / 4 + 5 / 6) / 3)
    assert scores.mprecision == pytest.approx((3 / 4 + 3 / 5 + 1) / 3)
    assert scores.mdice == pytest.approx((6 / 8 + 6 / 9 + 10 / 11) / 3)
    assert scores.present.tolist() == [True, True, True]


def test_ignored_pixels_are_not_counted_whatever_is_predicted_there():
    other = PREDICTION.copy()
    other[3, 2:] = [1, 1]
    matrix = ConfusionMatrix(3)
    matrix.update(TARGET, other)
    np.testing.assert_array_equal(matrix.matrix, EXPECTED_MATRIX)
    assert matrix.matrix.sum() == 14


def test_absent_class_is_nan_left_out_of_means_and_reported():
    # A 4th class "d" that neither the truth nor the prediction contains.
    scores = image_scores(TARGET, PREDICTION, num_classes=4)
    assert scores.present.tolist() == [True, True, True, False]
    for name in EXPECTED:
        assert math.isnan(scores.per_class[name][3])
    assert scores.miou == pytest.approx(image_scores(TARGET, PREDICTION, num_classes=3).miou)

    report = scores.as_dict(["a", "b", "c", "d"])
    assert report["absent_classes"] == ["d"]
    for prefix in ("iou", "pa", "precision", "dice"):
        assert report[f"{prefix}_d"] is None
    assert report["miou"] == pytest.approx((3 / 5 + 3 / 6 + 5 / 6) / 3)


def test_class_only_predicted_has_iou_zero_and_undefined_recall():
    # Class 1 never occurs in the truth but is predicted once: IoU 0, precision 0, recall 0/0.
    target = np.array([[0, 0], [0, 0]])
    prediction = np.array([[0, 0], [0, 1]])
    scores = image_scores(target, prediction, num_classes=2)
    assert scores.present.tolist() == [True, True]
    assert scores.per_class["iou"][1] == 0 and scores.per_class["precision"][1] == 0
    assert math.isnan(scores.per_class["recall"][1])
    assert scores.miou == pytest.approx((3 / 4 + 0) / 2)  # class 0: TP 3, FN 1
    assert scores.mpa == pytest.approx(3 / 4)  # over classes with ground truth only
    assert scores.mprecision == pytest.approx((1 + 0) / 2)  # over classes with predictions
    assert scores.as_dict(["bg", "fg"])["pa_fg"] is None


def test_as_dict_keys_are_stable_and_json_ready():
    report = image_scores(TARGET, PREDICTION, num_classes=3).as_dict(["bg", "road", "car"])
    means = ["miou", "mpa", "mprecision", "mdice", "accuracy"]
    per_class = [f"{p}_{c}" for p in ("iou", "pa", "precision", "dice") for c in ("bg", "road", "car")]
    assert list(report) == [*means, *per_class, "absent_classes"]  # pixel accuracy once, not again as recall
    assert report["pa_car"] == pytest.approx(5 / 6)
    assert json.loads(json.dumps(report, allow_nan=False)) == report


def test_as_dict_rejects_wrong_number_of_class_names():
    with pytest.raises(SegpipeError, match="got 2 class names for 3 classes"):
        image_scores(TARGET, PREDICTION, num_classes=3).as_dict(["a", "b"])


def test_no_pixels_gives_nan_scores_and_null_report():
    scores = ConfusionMatrix(2).compute()
    assert math.isnan(scores.accuracy) and math.isnan(scores.miou)
    report = scores.as_dict(["a", "b"])
    assert report["miou"] is None and report["accuracy"] is None
    assert report["absent_classes"] == ["a", "b"]


def test_accumulating_batches_equals_one_big_update():
    rng = np.random.default_rng(0)
    target = rng.integers(0, 5, size=(6, 16, 16))
    target[rng.random(target.shape) < 0.1] = 255
    prediction = rng.integers(0, 5, size=(6, 16, 16))

    whole = ConfusionMatrix(5)
    whole.update(target, prediction)
    batched = ConfusionMatrix(5)
    for start in range(0, 6, 2):
        batched.update(torch.from_numpy(target[start : start + 2]), torch.from_numpy(prediction[start : start + 2]))
    np.testing.assert_array_equal(batched.matrix, whole.matrix)
    assert whole.matrix.sum() == (target != 255).sum()


def test_merge_adds_counts_and_reset_clears_them():
    first, second = ConfusionMatrix(3), ConfusionMatrix(3)
    first.update(TARGET[:2], PREDICTION[:2])
    second.update(TARGET[2:], PREDICTION[2:])
    first.merge(second)
    np.testing.assert_array_equal(first.matrix, EXPECTED_MATRIX)
    first.reset()
    assert first.matrix.sum() == 0


def test_merge_rejects_other_classes():
    with pytest.raises(SegpipeError, match="cannot merge a confusion matrix of 4 classes"):
        ConfusionMatrix(3).merge(ConfusionMatrix(4))


def test_matrix_property_is_a_copy():
    matrix = ConfusionMatrix(3)
    matrix.update(TARGET, PREDICTION)
    matrix.matrix[0, 0] = 100
    assert matrix.matrix[0, 0] == 3


def test_invalid_label_raises_value_error_naming_it():
    target = TARGET.copy()
    target[0, 0] = 7
    with pytest.raises(ValueError, match=r"ground-truth label 7 is outside \[0, 3\)"):
        ConfusionMatrix(3).update(target, PREDICTION)
    with pytest.raises(LabelError, match=r"ground-truth label -1 is outside"):
        ConfusionMatrix(3).update(np.array([0, -1]), np.array([0, 0]))


def test_invalid_prediction_raises_but_not_under_ignored_pixels():
    with pytest.raises(LabelError, match=r"predicted class 3 is outside \[0, 3\)"):
        ConfusionMatrix(3).update(np.array([0, 1]), np.array([0, 3]))
    ConfusionMatrix(3).update(np.array([0, 255]), np.array([0, 3]))


def test_update_rejects_float_and_mismatched_inputs():
    with pytest.raises(SegpipeError, match="integer class indices, got float32"):
        ConfusionMatrix(3).update(TARGET, torch.zeros(4, 4))
    with pytest.raises(SegpipeError, match=r"target shape \(4, 4\) and prediction shape \(3, 4, 4\)"):
        ConfusionMatrix(3).update(TARGET, np.zeros((3, 4, 4), dtype=np.int64))


def test_ignore_index_must_not_be_a_class():
    with pytest.raises(SegpipeError, match="ignore_index 0 is a class index"):
        ConfusionMatrix(3, ignore_index=0)


def test_scores_are_read_only():
    scores = image_scores(TARGET, PREDICTION, num_classes=3)
    with pytest.raises(ValueError, match="assignment destination is read-only"):
        scores.per_class["iou"][0] = 1.0
    with pytest.raises(ValueError, match="assignment destination is read-only"):
        scores.present[0] = False


@pytest.mark.parametrize("num_classes", [3, 4, 5, 6])
def test_matches_torchmetrics_on_random_data(num_classes):
    rng = np.random.default_rng(num_classes)
    # Truth uses classes [0, C-2); prediction mostly copies it and otherwise draws from
    # [0, C-1), so class C-2 is only predicted and class C-1 is absent.
    target = rng.integers(0, num_classes - 2, size=(4, 32, 32))
    prediction = np.where(rng.random(target.shape) < 0.7, target, rng.integers(0, num_classes - 1, target.shape))
    target[rng.random(target.shape) < 0.1] = 255
    ours = image_scores(target, prediction, num_classes)
    assert ours.present.tolist() == [True] * (num_classes - 1) + [False]

    preds, truth = torch.from_numpy(prediction), torch.from_numpy(target)
    common = {"num_classes": num_classes, "ignore_index": 255}
    reference_matrix = MulticlassConfusionMatrix(**common)(preds, truth).numpy()
    np.testing.assert_array_equal(ours.confusion, reference_matrix)

    references = {
        "iou": MulticlassJaccardIndex(average="none", **common),
        "precision": MulticlassPrecision(average="none", **common),
        "recall": MulticlassRecall(average="none", **common),
        "dice": MulticlassF1Score(average="none", **common),
    }
    for name, metric in references.items():
        expected = metric(preds, truth).double().numpy()
        values = ours.per_class[name]
        defined = ~np.isnan(values)
        np.testing.assert_allclose(values[defined], expected[defined], atol=1e-6, err_msg=name)
        # torchmetrics reports 0 where a ratio is 0/0; we report NaN and leave it out of means.
        np.testing.assert_array_equal(expected[~defined], 0.0)
    assert math.isnan(ours.per_class["recall"][num_classes - 2])

    # torchmetrics' macro average also skips absent classes, so the means over present classes agree.
    macro_iou = MulticlassJaccardIndex(average="macro", **common)(preds, truth).item()
    assert ours.miou == pytest.approx(macro_iou, abs=1e-6)
    macro_dice = MulticlassF1Score(average="macro", **common)(preds, truth).item()
    assert ours.mdice == pytest.approx(macro_dice, abs=1e-6)
    assert ours.accuracy == pytest.approx(
        MulticlassRecall(average="micro", **common)(preds, truth).item(), abs=1e-6
    )


def test_scores_from_a_saved_confusion_matrix():
    scores = SegmentationScores.from_confusion(EXPECTED_MATRIX)
    np.testing.assert_allclose(scores.per_class["iou"], EXPECTED["iou"])
    with pytest.raises(SegpipeError, match="must be square"):
        SegmentationScores.from_confusion(np.zeros((2, 3)))


def test_mean_rejects_unknown_metric_name():
    with pytest.raises(SegpipeError, match="unknown metric 'f1'; choose one of iou, precision, recall, dice"):
        image_scores(TARGET, PREDICTION, num_classes=3).mean("f1")
