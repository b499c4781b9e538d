"""`dvc repro` of the whole pipeline on a tiny copy of the sample, in a temporary git repo."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

TINY = {
    "augment": {"copies": 1},
    "model": {"base_channels": 4},
    "train": {"image_size": 32, "epochs": 2, "batch_size": 4, "save_period": 1},
}


def run(cmd: list[str], cwd: Path) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)  # the project's own mlflow.db is part of what is checked
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def merge(base: dict, overrides: dict) -> dict:
    out = dict(base)
    for key, value in overrides.items():
        out[key] = merge(base.get(key, {}), value) if isinstance(value, dict) else value
    return out


def make_project(root: Path, images: int = 12, overrides: dict = TINY) -> Path:
    """A git + DVC project with the repo's code, dvc.yaml, tiny params and `images` sample files."""
    root.mkdir()
    for name in ("pipeline", "src"):
        shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "dvc.yaml", root)
    params = merge(yaml.safe_load((REPO / "params.yaml").read_text()), overrides)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sample = root / "data" / "sample"
    sample.mkdir(parents=True)
    for json_path in sorted((REPO / "data" / "sample").glob("*.json"))[:images]:
        shutil.copy(json_path, sample)
        shutil.copy(json_path.with_suffix(".jpg"), sample)
    (root / ".gitignore").write_text("__pycache__/\nmlflow.db\nmlruns/\n")
    run(["git", "init", "-q"], root)
    run(["git", "config", "user.email", "test@example.com"], root)
    run(["git", "config", "user.name", "test"], root)
    run(["dvc", "init", "-q"], root)
    run(["dvc", "config", "core.analytics", "false"], root)
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-qm", "tiny project"], root)
    return root


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = make_project(tmp_path_factory.mktemp("e2e") / "project")
    run(["dvc", "repro"], root)
    return root


def test_repro_runs_every_stage_and_writes_its_outputs(project: Path):
    data = json.loads((project / "metrics" / "data.json").read_text())
    assert data["images"] == 12
    train_ids = (project / "data" / "splits" / "train.txt").read_text().split()
    val_ids = (project / "data" / "splits" / "val.txt").read_text().split()
    assert len(train_ids) + len(val_ids) == 12
    assert len(list((project / "data" / "augmented" / "masks").glob("*.png"))) == len(train_ids)
    for name in ("best.pt", "last.pt", "epoch_001.pt", "epoch_002.pt"):
        assert (project / "models" / name).is_file()
    history = (project / "metrics" / "train_history.csv").read_text().splitlines()
    assert history[0] == "epoch,train_loss,val_loss,val_miou,lr" and len(history) == 3


def test_second_repro_has_nothing_to_do(project: Path):
    out = run(["dvc", "repro"], project)
    assert "Running stage" not in out


def test_metrics_show_reads_the_stage_metrics(project: Path):
    shown = json.loads(run(["dvc", "metrics", "show", "--json"], project))
    assert json.dumps(shown).count("best_val_miou") == 1


def test_training_run_is_in_the_project_mlflow_database(project: Path):
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("segpipe")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    assert runs[0].info.run_id == (project / "models" / "mlflow_run_id.txt").read_text().strip()
    assert runs[0].data.params["model.backbone"] == "plain"
