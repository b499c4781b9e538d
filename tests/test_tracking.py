"""train_stage's outputs (metrics, history, curves) and its MLflow run, which never stops training."""

from __future__ import annotations

import csv
import json
import multiprocessing
import os
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient

from segpipe.training import stage as run_module
from segpipe import tracking
from segpipe.training.stage import TrainOutputs, train_stage
from tests.helpers import Interrupt, tiny_params, tiny_samples, use_tmp_mlflow

EXPERIMENT = "tiny-experiment"


def outputs_in(root: Path) -> TrainOutputs:
    return TrainOutputs(
        models_dir=root / "models",
        metrics=root / "metrics" / "train.json",
        history=root / "metrics" / "train_history.csv",
        plots_dir=root / "plots" / "train",
    )


@pytest.fixture(scope="module")
def staged(tmp_path_factory):
    """One 3-epoch train_stage validating every 2nd epoch, run as DVC experiment `exp-tiny`."""
    root = tmp_path_factory.mktemp("stage")
    samples = tiny_samples(root / "processed", count=3)
    params = tiny_params({"epochs": 3, "eval_period": 2}, base={"experiment": EXPERIMENT})
    outputs = outputs_in(root)
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as monkeypatch:
        use_tmp_mlflow(monkeypatch, root)
        monkeypatch.setenv("DVC_EXP_NAME", "exp-tiny")
        torch.set_num_threads(1)
        try:
            metrics = train_stage(params, samples[:2], samples[2:], outputs, progress=False)
        finally:
            torch.set_num_threads(threads)
    client = MlflowClient(tracking_uri=f"sqlite:///{root}/mlflow.db")
    return {"root": root, "params": params, "samples": samples, "outputs": outputs, "metrics": metrics, "client": client}


def test_metrics_json_sums_up_the_run(staged):
    metrics = json.loads(staged["outputs"].metrics.read_text())
    assert metrics == staged["metrics"]
    assert set(metrics) == {
        "best_epoch", "best_val_miou", "final_train_loss", "final_val_loss", "final_val_miou",
        "epochs", "train_images", "val_images", "seconds",
    }
    assert (metrics["epochs"], metrics["train_images"], metrics["val_images"]) == (3, 2, 1)
    assert metrics["best_epoch"] in (2, 3)  # the validated epochs


def test_history_has_one_row_per_epoch_and_empty_val_cells_between_evaluations(staged):
    with open(staged["outputs"].history, newline="") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
    assert reader.fieldnames == ["epoch", "train_loss", "val_loss", "val_miou", "lr"]
    assert [row["epoch"] for row in rows] == ["1", "2", "3"]
    assert rows[0]["val_loss"] == rows[0]["val_miou"] == ""
    for row in rows[1:]:
        assert 0 <= float(row["val_miou"]) <= 1 and float(row["val_loss"]) > 0
    assert all(float(row["train_loss"]) > 0 and float(row["lr"]) > 0 for row in rows)


def test_loss_and_miou_curves_are_written(staged):
    for name in ("loss.png", "miou.png"):
        path = staged["outputs"].plots_dir / name
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_an_mlflow_run_holds_the_flat_params_per_epoch_metrics_and_dvc_tags(staged):
    client: MlflowClient = staged["client"]
    experiment = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    run_id_file = staged["outputs"].models_dir / tracking.RUN_ID_FILE
    assert run_id_file.read_text().strip() == run.info.run_id
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "exp-tiny"
    assert run.data.params["train.lr"] == "0.003"
    assert run.data.params["model.backbone"] == "plain"
    assert run.data.params["base.classes"] == '["background", "lesion"]'
    assert run.data.params == tracking.flatten(staged["params"].model_dump(mode="json"))
    samples = staged["samples"]
    files = [p for s in samples for p in (s.image, s.mask)]
    assert run.data.tags["segpipe.params_hash"] == tracking.content_hash(staged["params"].model_dump(mode="json"))
    assert run.data.tags["segpipe.data_hash"] == tracking.files_hash(files)
    assert run.data.tags["dvc.exp_name"] == "exp-tiny"
    steps = {name: [m.step for m in client.get_metric_history(run.info.run_id, name)] for name in
             ("train_loss", "val_loss", "val_miou", "lr")}
    assert steps == {"train_loss": [1, 2, 3], "val_loss": [2, 3], "val_miou": [2, 3], "lr": [1, 2, 3]}
    assert run.data.metrics["best_val_miou"] == pytest.approx(staged["metrics"]["best_val_miou"], abs=1e-6)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert artifacts == {"plots/loss.png", "plots/miou.png"}


def test_training_goes_on_with_a_warning_when_mlflow_fails(tmp_path: Path, mlflow_env, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("")  # a database below a regular file cannot be created, even by root
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{blocker}/mlflow.db")
    samples = tiny_samples(tmp_path / "processed")
    outputs = outputs_in(tmp_path)
    with pytest.warns(UserWarning, match="MLflow start failed; going on without tracking"):
        metrics = train_stage(tiny_params({"epochs": 1}), samples, samples, outputs, progress=False)
    assert metrics["epochs"] == 1
    assert outputs.metrics.exists() and (outputs.models_dir / "best.pt").exists()
    assert not (outputs.models_dir / tracking.RUN_ID_FILE).exists()
    assert mlflow.active_run() is None


def test_a_resumed_stage_continues_the_same_mlflow_run(tmp_path: Path, mlflow_env, monkeypatch):
    samples = tiny_samples(tmp_path / "processed")
    outputs = outputs_in(tmp_path)
    train = {"epochs": 2}
    real_fit = run_module.fit
    monkeypatch.setattr(run_module, "fit", lambda *args, **kwargs: real_fit(*args, **kwargs, on_epoch_end=Interrupt(1)))
    with pytest.raises(KeyboardInterrupt):
        train_stage(tiny_params(train), samples, samples, outputs, progress=False)
    monkeypatch.setattr(run_module, "fit", real_fit)
    run_id = (outputs.models_dir / tracking.RUN_ID_FILE).read_text().strip()
    train_stage(tiny_params({**train, "resume": True}), samples, samples, outputs, progress=False)
    assert (outputs.models_dir / tracking.RUN_ID_FILE).read_text().strip() == run_id
    client = MlflowClient()
    assert client.get_run(run_id).info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run_id, "train_loss")] == [1, 2]


@pytest.mark.parametrize("inside", [".dvc/tmp/exps/xyz", ".dvc/tmp/exps/xyz/deeper", ".dvc/tmp/exps"])
def test_project_root_maps_a_dvc_experiment_copy_to_the_project(tmp_path: Path, monkeypatch, inside):
    monkeypatch.delenv("DVC_ROOT", raising=False)
    repo = tmp_path / "repo"
    copy = repo / inside
    copy.mkdir(parents=True)  # not a git repo: project_root falls back to the start folder
    assert tracking.project_root(copy) == repo.resolve()
    monkeypatch.setenv("DVC_ROOT", str(copy))
    assert tracking.project_root(tmp_path) == repo.resolve()


def test_project_root_is_dvc_root_outside_experiment_copies(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    assert tracking.project_root(Path("/")) == tmp_path.resolve()


def _start_and_log(uri: str) -> str | None:
    os.environ["MLFLOW_TRACKING_URI"] = uri
    tracker = tracking.Tracker()
    tracker.start("parallel", None, {"train": {"lr": 0.1}}, {})
    for step in range(5):
        tracker.log_metrics({"train_loss": 1.0 / (step + 1)}, step=step)
    tracker.end()
    return tracker.run_id if tracker.enabled else None


def test_parallel_runs_on_a_fresh_sqlite_store_all_succeed(tmp_path: Path):
    # Queued `dvc exp` workers start at once on a new mlflow.db; without the store lock MLflow's
    # schema creation races ("table runs already exists") and runs are lost.
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    context = multiprocessing.get_context("spawn")
    with context.Pool(4) as pool:
        run_ids = pool.map(_start_and_log, [uri] * 4)
    assert None not in run_ids and len(set(run_ids)) == 4
    experiment = mlflow.MlflowClient(uri).get_experiment_by_name("parallel")
    assert len(mlflow.MlflowClient(uri).search_runs([experiment.experiment_id])) == 4


def test_params_are_logged_in_the_spelling_of_params_yaml():
    flat = tracking.flatten({"model": {"cbam": True, "backbone": "vgg16"}, "augment": {"blur_sigma": [0.3, 1.5]}})
    assert flat == {"model.cbam": "true", "model.backbone": "vgg16", "augment.blur_sigma": "[0.3, 1.5]"}
