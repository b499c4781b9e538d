"""The 6-class aerial sample through every stage up to training (colour masks, not labelme)."""

from __future__ import annotations

from pathlib import Path

from segpipe.prep.augment import augment_dataset
from segpipe.prep.convert import convert_dataset
from segpipe.layout import training_samples, validation_samples
from segpipe.prep.synthetic import AERIAL_CLASSES, AERIAL_COLORS, make_aerial
from segpipe.prep.split import write_split
from segpipe.models.checkpoint import load_checkpoint, model_from_checkpoint
from segpipe.training.loop import fit
from tests.helpers import tiny_params


def test_the_aerial_sample_trains_a_six_class_model(tmp_path: Path):
    params = tiny_params(
        {"epochs": 2},
        base={"classes": list(AERIAL_CLASSES)},
        data={"format": "masks", "mask_colors": AERIAL_COLORS, "workers": 1},
        split={"val_fraction": 0.3},
        augment={"copies": 1},
    )
    make_aerial(tmp_path / "raw", count=6, size=48, seed=0)
    processed, splits, augmented = tmp_path / "processed", tmp_path / "splits", tmp_path / "augmented"
    summary = convert_dataset(
        tmp_path / "raw", processed, tmp_path / "data.json", classes=params.base.classes, data=params.data, progress=False
    )
    assert summary.images == 6
    assert {f"fraction_{name}" for name in AERIAL_CLASSES} <= set(summary.metrics)
    split = write_split(processed, splits, params.split, params.base.seed)
    copies = augment_dataset(processed, splits, augmented, params.augment, seed=params.base.seed, workers=1, progress=False)
    assert copies == len(split.train)
    train, val = training_samples(processed, splits, augmented), validation_samples(processed, splits)
    assert len(train) == 2 * len(split.train) and len(val) == len(split.val)

    state = fit(params, train, val, tmp_path / "models", progress=False)
    checkpoint = load_checkpoint(tmp_path / "models" / "last.pt")
    assert checkpoint["model_args"]["num_classes"] == 6
    assert checkpoint["classes"] == list(AERIAL_CLASSES)
    assert [row["epoch"] for row in checkpoint["history"]] == [1, 2] == [row["epoch"] for row in state.history]
    assert all(0 <= row["val_miou"] <= 1 for row in checkpoint["history"])
    assert model_from_checkpoint(checkpoint).head.out_channels == 6
