"""`dvc repro` of the README's aerial walk-through (params-aerial.yaml as the project's params,
data.raw pointing at the aerial sample) in a temporary git repo: colour masks, six classes,
patch training and tiled evaluation under DVC."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from segpipe.models.checkpoint import load_model
from segpipe.prep.synthetic import AERIAL_CLASSES
from tests.helpers import make_project, run

pytestmark = pytest.mark.slow  # a DVC run of the whole pipeline: a minute

SHRINK = {
    "split": {"val_fraction": 0.3},
    "augment": {"copies": 1},
    "model": {"base_channels": 4},
    "train": {"patch_size": 32, "patches_per_image": 2, "epochs": 2, "batch_size": 4, "freeze_batch_size": 4},
}


def test_dvc_repro_runs_the_aerial_walkthrough(tmp_path: Path):
    root = make_project(tmp_path / "project", images=0, overrides=SHRINK, params_file="params-aerial.yaml")
    run(["python", "-m", "pipeline", "sample", "data/aerial", "--kind", "aerial", "--count", "8", "--size", "96"], root)
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-qm", "the aerial walk-through"], root)
    run(["dvc", "repro"], root)

    assert load_model(root / "models" / "best.pt").spec.to_dict()["mode"] == "patches"
    scores = json.loads((root / "metrics" / "eval.json").read_text())
    assert {f"iou_{name}" for name in AERIAL_CLASSES} <= set(scores)
    assert json.loads((root / "metrics" / "data.json").read_text())["images"] == 8
