"""`dvc repro` of the whole pipeline on a tiny copy of the sample, in a temporary git repo."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import make_project, run

pytestmark = pytest.mark.slow  # DVC runs of the whole pipeline: minutes


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
