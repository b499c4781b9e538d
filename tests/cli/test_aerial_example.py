"""The README's multi-class walk-through: the aerial sample through every command with
`--params params-aerial.yaml` (the shipped file, shrunk to seconds)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import yaml
from PIL import Image
from typer.testing import CliRunner

from pipeline.app import app
from segpipe.config import load_params
from segpipe.models.checkpoint import load_model
from segpipe.training.stage import check_model_input
from segpipe.prep.synthetic import AERIAL_CLASSES, AERIAL_COLORS
from tests.helpers import REPO, TINY_AERIAL, merge

runner = CliRunner()


def invoke(*args) -> str:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def test_the_shipped_aerial_params_describe_the_aerial_sample_and_train_on_patches():
    params = load_params(REPO / "params-aerial.yaml")
    check_model_input(params)
    assert params.base.classes == AERIAL_CLASSES
    assert params.data.format == "masks" and params.data.mask_colors == AERIAL_COLORS
    assert params.train.sampling == "patches"


def test_the_aerial_walkthrough_runs_every_command_with_its_params_file(tmp_path: Path, mlflow_env: Path):
    shipped = yaml.safe_load((REPO / "params-aerial.yaml").read_text())
    params = tmp_path / "params-aerial.yaml"
    params.write_text(yaml.safe_dump(merge(shipped, TINY_AERIAL), sort_keys=False))
    raw, processed, splits, augmented, models = (tmp_path / n for n in ("raw", "processed", "splits", "aug", "models"))
    metrics = tmp_path / "metrics"
    invoke("sample", raw, "--kind", "aerial", "--count", "8", "--size", "96", "--road-width", "3")
    invoke("convert", raw, processed, "--metrics", metrics / "data.json", "--params", params, "--quiet")
    invoke("split", processed, splits, "--params", params)
    invoke("augment", processed, splits, augmented, "--params", params, "--quiet")
    invoke("train", processed, splits, augmented, models, "--metrics", metrics / "train.json",
           "--history", metrics / "history.csv", "--plots-dir", tmp_path / "plots", "--params", params, "--quiet")
    invoke("evaluate", models / "best.pt", processed, splits, "--metrics", metrics / "eval.json",
           "--per-class", metrics / "pc.csv", "--per-image", metrics / "pi.csv", "--iou-plot", metrics / "iou.csv",
           "--plots-dir", tmp_path / "plots", "--params", params, "--quiet")
    invoke("predict", models / "best.pt", raw / "images", "--out", tmp_path / "pred", "--device", "cpu", "--quiet")

    loaded = load_model(models / "best.pt")
    assert (type(loaded.spec).__name__, loaded.image_size, loaded.classes) == ("PatchInput", 32, AERIAL_CLASSES)
    assert {f"iou_{name}" for name in AERIAL_CLASSES} <= set(json.loads((metrics / "eval.json").read_text()))
    mask = Image.open(tmp_path / "pred" / "aerial_000.png")
    assert mask.mode == "P" and mask.size == (96, 96) and np.asarray(mask).max() < len(AERIAL_CLASSES)
