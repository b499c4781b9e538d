"""Validation of a patch-trained model: whole images by blended tiles, scored as evaluate scores."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from segpipe.config import EvaluateSection
from segpipe.evaluation.evaluate import EvalOutputs, evaluate
from segpipe.training.loop import fit
from tests.helpers import make_processed, tiny_params
from segpipe.layout import samples_in


def test_training_validates_a_patch_model_with_the_tiles_that_evaluate_scores(tmp_path: Path):
    # 40x56 images, 16 px patches at 0.75: windows of 21 source pixels, several per image.
    make_processed(tmp_path / "processed", count=3, size=(40, 56), visible=True)
    samples = samples_in(tmp_path / "processed", ["img000", "img001", "img002"])
    train = {"sampling": "patches", "patch_size": 16, "patch_scale": 0.75, "epochs": 6, "lr": 0.03, "batch_size": 2, "patch_class_balance": 0.5}
    state = fit(tiny_params(train), samples, samples, tmp_path / "models", progress=False)
    last = state.history[-1]
    assert math.isfinite(last["val_loss"]) and last["val_loss"] > 0

    out = EvalOutputs(
        tmp_path / "eval.json", tmp_path / "info.json", tmp_path / "pc.csv", tmp_path / "pi.csv", tmp_path / "iou.csv",
        tmp_path / "plots",
    )
    report = evaluate(tmp_path / "models" / "best.pt", samples, out, EvaluateSection(batch_size=2, gallery_size=0), progress=False)
    metrics = report.metrics
    assert metrics["miou"] == pytest.approx(state.best_miou, abs=1e-12)
    assert metrics["iou_lesion"] > 0  # the lesion was predicted: the agreement is not all background
