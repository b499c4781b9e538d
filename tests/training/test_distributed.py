"""The train command under `torchrun`: two CPU processes (gloo) train one model, rank 0 writes it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
import yaml

from segpipe.prep.augment import augment_dataset
from segpipe.config import AugmentSection, SplitSection
from segpipe.prep.split import write_split
from segpipe.models.checkpoint import load_checkpoint, model_from_checkpoint
from tests.helpers import REPO, make_processed

TORCHRUN = Path(sys.executable).parent / "torchrun"


def test_torchrun_with_two_cpu_processes_trains_and_only_rank_0_writes(tmp_path: Path):
    processed = make_processed(tmp_path / "processed", count=5)
    # 4 train images and 1 val image: rank 1 validates nothing, and the confusion sums still work.
    split = write_split(processed, tmp_path / "splits", SplitSection(val_fraction=0.2), seed=0)
    assert (len(split.train), len(split.val)) == (4, 1)
    augment_dataset(
        processed, tmp_path / "splits", tmp_path / "augmented", AugmentSection(enabled=False), seed=0, progress=False
    )
    params = {
        "model": {"backbone": "plain", "base_channels": 4},
        "train": {"image_size": 32, "epochs": 3, "freeze_epochs": 1, "batch_size": 2, "device": "cpu", "save_period": 2},
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db",
        "DVC_ROOT": str(tmp_path),
        "OMP_NUM_THREADS": "1",
    }
    command = [
        str(TORCHRUN), "--standalone", "--nproc_per_node=2", "--log-dir", "logs", "--redirects", "3",
        "-m", "pipeline", "train", "processed", "splits", "augmented", "models", "--quiet",
    ]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    logs = {path.parent.name: path.read_text() for path in (tmp_path / "logs").rglob("stdout.log")}
    assert done.returncode == 0, done.stderr[-3000:] + "\n".join(logs.values())

    # Rank 0 reports (it wrote the outputs); rank 1 trained its shard and returned without writing.
    assert set(logs) == {"0", "1"}
    assert "train: best val mIoU" in logs["0"]
    assert "train: registered as MLflow model 'segpipe' version 1" in logs["0"]  # the best model, published once
    assert "train:" not in logs["1"]
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == [
        "best.pt", "epoch_002.pt", "last.pt", "mlflow_run_id.txt",
    ]
    info = json.loads((tmp_path / "metrics" / "train_info.json").read_text())
    assert (info["epochs"], info["train_images"], info["val_images"]) == (3, 4, 1)
    history = (tmp_path / "metrics" / "train_history.csv").read_text().splitlines()
    assert len(history) == 1 + 3

    checkpoint = load_checkpoint(tmp_path / "models" / "last.pt")
    assert not any(key.startswith("module.") for key in checkpoint["model"])  # not DDP's wrapper names
    model = model_from_checkpoint(checkpoint).eval()
    with torch.no_grad():
        assert torch.isfinite(model(torch.randn(1, 3, 32, 32))).all()
