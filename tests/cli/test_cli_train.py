"""`python -m pipeline train` as a user runs it: in its own process, on a fresh MLflow store."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

from tests.helpers import REPO, make_processed


def test_train_ends_with_where_things_are_and_no_library_chatter(tmp_path: Path):
    make_processed(tmp_path / "processed", count=3)
    (tmp_path / "splits").mkdir()
    (tmp_path / "splits" / "train.txt").write_text("img000\nimg001\n")
    (tmp_path / "splits" / "val.txt").write_text("img002\n")
    params = {
        "model": {"base_channels": 4},
        "train": {"image_size": 32, "epochs": 1, "batch_size": 2, "device": "cpu", "save_period": 0},
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_LOGGING_LEVEL", "DVC_EXP_NAME")}
    # A fresh matplotlib cache and MLflow database: what a first run meets.
    env.update(PYTHONPATH=str(REPO), DVC_ROOT=str(tmp_path), MPLCONFIGDIR=str(tmp_path / "mpl"), OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "pipeline", "train", "processed", "splits", "augmented", "models"]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr

    run_id = (tmp_path / "models" / "mlflow_run_id.txt").read_text().strip()
    assert "-> models/best.pt" in done.stdout
    assert f"MLflow run {run_id}" in done.stdout
    assert "`mlflow ui --backend-store-uri sqlite:///mlflow.db`" in done.stdout
    assert re.search(r"http://127\.0\.0\.1:5000/#/experiments/\d+\?workflowType=machine_learning", done.stdout)
    # segpipe's own lines only: no font-cache note, no MLflow or alembic database set-up lines.
    assert "epoch 1: train_loss" in done.stderr
    assert "fontManager" not in done.stderr and "INFO" not in done.stderr and "alembic" not in done.stderr
    assert (tmp_path / "mlflow.db").is_file()
    assert set(json.loads((tmp_path / "metrics" / "train.json").read_text())) >= {"best_val_miou"}
