"""train_stage's outputs (metrics, history, curves) and its MLflow run, which never stops training."""

from __future__ import annotations

import csv
import json
import multiprocessing
import os
import shutil
import subprocess
import warnings
from pathlib import Path

import mlflow
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from segpipe.models.checkpoint import MODEL_KEYS
from segpipe.training import stage as run_module
from segpipe import tracking
from segpipe.config import load_params
from segpipe.training.stage import train_stage
from tests.helpers import REPO, Interrupt, tiny_params, tiny_samples, train_outputs_in, use_tmp_mlflow

EXPERIMENT = "tiny-experiment"


@pytest.fixture(scope="module")
def staged(tmp_path_factory):
    """One 3-epoch train_stage validating every 2nd epoch, run as DVC experiment `exp-tiny`."""
    root = tmp_path_factory.mktemp("stage")
    samples = tiny_samples(root / "processed", count=3)
    params = tiny_params({"epochs": 3, "eval_period": 2}, base={"experiment": EXPERIMENT})
    outputs = train_outputs_in(root)
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as monkeypatch:
        use_tmp_mlflow(monkeypatch, root)
        monkeypatch.setenv("DVC_EXP_NAME", "exp-tiny")
        torch.set_num_threads(1)
        try:
            report = train_stage(params, samples[:2], samples[2:], outputs, progress=False)
        finally:
            torch.set_num_threads(threads)
    client = MlflowClient(tracking_uri=f"sqlite:///{root}/mlflow.db")
    return {"root": root, "params": params, "samples": samples, "outputs": outputs, "report": report, "client": client}


def test_metrics_json_holds_the_results_only(staged):
    metrics = json.loads(staged["outputs"].metrics.read_text())
    assert metrics == staged["report"].metrics
    assert set(metrics) == {"best_val_miou", "final_train_loss", "final_val_loss", "final_val_miou"}
    history = list(csv.DictReader(staged["outputs"].history.open()))
    assert metrics["final_val_miou"] == pytest.approx(float(history[-1]["val_miou"]), abs=1e-6)


def test_info_json_holds_counts_and_durations(staged):
    info = json.loads(staged["outputs"].info.read_text())
    assert info == staged["report"].info
    assert (info["epochs"], info["train_images"], info["val_images"]) == (3, 2, 1)
    assert info["best_epoch"] in (2, 3)  # the validated epochs
    assert info["seconds"] > 0


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
    assert run.data.params == tracking.flatten(staged["params"].model_dump(mode="json"))  # not from a file: JSON
    samples = staged["samples"]
    files = [p for s in samples for p in (s.image, s.mask)]
    assert run.data.tags["segpipe.params_hash"] == tracking.content_hash(staged["params"].model_dump(mode="json"))
    assert run.data.tags["segpipe.data_hash"] == tracking.files_hash(files)
    assert run.data.tags["dvc.exp_name"] == "exp-tiny"
    steps = {name: [m.step for m in client.get_metric_history(run.info.run_id, name)] for name in
             ("train_loss", "val_loss", "val_miou", "lr")}
    assert steps == {"train_loss": [1, 2, 3], "val_loss": [2, 3], "val_miou": [2, 3], "lr": [1, 2, 3]}
    assert run.data.metrics["best_val_miou"] == pytest.approx(staged["report"].metrics["best_val_miou"], abs=1e-6)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert artifacts == {"plots/loss.png", "plots/miou.png"}


def test_the_run_charts_results_and_tags_the_counts(staged):
    run = staged["client"].search_runs([staged["client"].get_experiment_by_name(EXPERIMENT).experiment_id])[0]
    assert set(run.data.metrics) == {"train_loss", "val_loss", "val_miou", "lr", "best_val_miou"}
    info = staged["report"].info
    assert run.data.tags["segpipe.best_epoch"] == str(info["best_epoch"])
    assert run.data.tags["segpipe.train_images"] == "2" and run.data.tags["segpipe.epochs"] == "3"


def test_best_pt_and_the_logged_checkpoint_have_no_training_state_and_last_pt_keeps_it(staged, tmp_path):
    client, report = staged["client"], staged["report"]
    local = Path(client.download_artifacts(report.run_id, "checkpoints/best.pt", str(tmp_path)))
    logged = torch.load(local, weights_only=True)
    assert set(logged) == set(MODEL_KEYS)
    on_disk = torch.load(report.best_checkpoint, weights_only=True)
    assert set(on_disk) == set(MODEL_KEYS)  # only last.pt resumes
    for key, value in on_disk["model"].items():
        assert torch.equal(logged["model"][key], value)
    last = staged["outputs"].models_dir / "last.pt"
    assert {"optimizer", "scheduler", "rng"} <= set(torch.load(last, weights_only=True))
    assert report.best_checkpoint.stat().st_size < last.stat().st_size / 2  # Adam's two moments are gone


def test_the_report_says_where_the_run_is(staged):
    report, client = staged["report"], staged["client"]
    assert report.best_checkpoint == staged["outputs"].models_dir / "best.pt"
    assert client.get_run(report.run_id).info.experiment_id == report.experiment_id


def test_training_goes_on_with_a_warning_when_mlflow_fails(tmp_path: Path, mlflow_env, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("")  # a database below a regular file cannot be created, even by root
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{blocker}/mlflow.db")
    samples = tiny_samples(tmp_path / "processed")
    outputs = train_outputs_in(tmp_path)
    with pytest.warns(UserWarning, match="MLflow start failed; going on without tracking"):
        report = train_stage(tiny_params({"epochs": 1}), samples, samples, outputs, progress=False)
    assert report.info["epochs"] == 1 and report.run_id is None
    assert outputs.metrics.exists() and (outputs.models_dir / "best.pt").exists()
    # Empty but present: evaluate depends on it in dvc.yaml, and no later resume reopens an old run.
    assert (outputs.models_dir / tracking.RUN_ID_FILE).read_text() == "\n"
    assert mlflow.active_run() is None


def test_a_resumed_stage_continues_the_same_mlflow_run(tmp_path: Path, mlflow_env, monkeypatch):
    samples = tiny_samples(tmp_path / "processed")
    outputs = train_outputs_in(tmp_path)
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


def test_a_run_whose_experiment_another_run_just_created_is_still_tracked(mlflow_env, monkeypatch):
    # Four runs start at once on a tracking server: all find no experiment, one creates it, and
    # the others' create fails with RESOURCE_ALREADY_EXISTS. Here another process "won" just
    # before this one's create.
    uri = tracking.tracking_uri()
    mlflow.MlflowClient(uri).create_experiment("raced")
    looked_up, looks = mlflow.get_experiment_by_name, []

    def look_up(name: str):  # the first look happened before the other run created it
        looks.append(name)
        return None if len(looks) == 1 else looked_up(name)

    monkeypatch.setattr(mlflow, "get_experiment_by_name", look_up)
    tracker = tracking.Tracker()
    tracker.start("raced", None, {"train": {"lr": 0.1}}, {})
    tracker.end()
    assert tracker.enabled and tracker.run_id is not None
    experiment = looked_up("raced")
    assert [r.info.run_id for r in mlflow.MlflowClient(uri).search_runs([experiment.experiment_id])] == [tracker.run_id]


def test_params_are_logged_in_the_spelling_of_params_yaml():
    flat = tracking.flatten({"model": {"cbam": True, "backbone": "vgg16"}, "augment": {"blur_sigma": [0.3, 1.5]}})
    assert flat == {"model.cbam": "true", "model.backbone": "vgg16", "augment.blur_sigma": "[0.3, 1.5]"}


def test_params_from_a_file_are_logged_as_the_file_spells_them_and_filters_match(tmp_path: Path, mlflow_env):
    path = tmp_path / "params.yaml"
    path.write_text("augment:\n  rotate_limit: 30\n  blur_sigma: [0.3,  1.5]\nbase:\n  classes:\n    - background\n    - lesion\n")
    params = load_params(path)
    assert params.augment.rotate_limit == 30.0  # typed as a float...
    logged = tracking.logged_params(params)
    assert logged["augment.rotate_limit"] == "30"  # ...logged as written
    assert logged["augment.blur_sigma"] == "[0.3, 1.5]"
    assert logged["base.classes"] == "[background, lesion]"
    assert logged["train.lr"] == "0.003"  # not in the file: the default, in JSON spelling
    assert set(logged) == set(tracking.flatten(params.model_dump(mode="json")))
    tracker = tracking.Tracker()
    tracker.start("spelling", "r", logged, {})
    tracker.end()
    client = MlflowClient()
    found = client.search_runs([tracker.experiment_id], "params.augment.rotate_limit = '30'")
    assert [run.info.run_id for run in found] == [tracker.run_id]


def test_a_dvc_experiment_run_is_named_after_the_experiment(monkeypatch, tmp_path: Path):
    monkeypatch.setenv("DVC_EXP_NAME", "enhanced")
    assert tracking.run_name(tmp_path) == "enhanced"


def test_a_workspace_run_is_named_after_the_commit(monkeypatch, tmp_path: Path):
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    assert tracking.run_name(tmp_path) == "workspace"  # not a git repo
    for command in (["init", "-q"], ["-c", "user.name=t", "-c", "user.email=t@e", "commit", "-q", "--allow-empty", "-m", "x"]):
        subprocess.run(["git", *command], cwd=tmp_path, check=True, capture_output=True)
    commit = tracking.git_commit(tmp_path)
    assert tracking.run_name(tmp_path) == f"workspace@{commit[:7]}"


def test_the_ui_command_and_the_model_training_view_url(tmp_path: Path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert tracking.ui_command(uri, cwd=tmp_path) == "mlflow ui --backend-store-uri sqlite:///mlflow.db"
    assert tracking.ui_command(uri, cwd=tmp_path / "elsewhere") == f"mlflow ui --backend-store-uri {uri}"
    assert tracking.ui_command("http://127.0.0.1:5050") is None  # a server is its own UI
    assert tracking.training_view_url(uri, "7") == "http://127.0.0.1:5000/#/experiments/7?workflowType=machine_learning"
    assert tracking.training_view_url("http://host:5050/", "7") == (
        "http://host:5050/#/experiments/7?workflowType=machine_learning"
    )


def test_evaluate_depends_on_the_run_id_file_that_each_training_run_rewrites(tmp_path: Path, mlflow_env):
    """DVC skips evaluate when its deps are unchanged; best.pt alone can be reproduced to the byte,
    which left the new MLflow run without its evaluation. The run id file changes with every run."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    train_outs = {out if isinstance(out, str) else next(iter(out)) for out in stages["train"]["outs"]}
    assert "models" in train_outs and f"models/{tracking.RUN_ID_FILE}" in stages["evaluate"]["deps"]
    samples = tiny_samples(tmp_path / "processed")
    outputs = train_outputs_in(tmp_path)
    ids = []
    for _ in range(2):
        train_stage(tiny_params({"epochs": 1}), samples, samples, outputs, progress=False)
        ids.append((outputs.models_dir / tracking.RUN_ID_FILE).read_text().strip())
    assert ids[0] != ids[1] and all(len(i) == 32 for i in ids)


def test_the_run_shows_the_stage_as_its_source_and_describes_itself(staged):
    run = staged["client"].get_run(staged["report"].run_id)
    assert run.data.tags["mlflow.source.name"] == "train stage (python -m pipeline train)"
    note = run.data.tags["mlflow.note.content"]
    assert note.startswith("No baseline params to compare with") and "Logged by the `train` stage" in note
    assert "`model.backbone`=plain" in note and "Headline metric: `miou`" in note


def test_the_description_lists_the_params_that_differ_from_the_baseline_commit(tmp_path: Path, monkeypatch):
    monkeypatch.delenv("DVC_EXP_BASELINE_REV", raising=False)
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    for command in (["init", "-q"], ["add", "params.yaml"], ["-c", "user.name=t", "-c", "user.email=t@e", "commit", "-qm", "p"]):
        subprocess.run(["git", *command], cwd=tmp_path, check=True)
    commit = tracking.git_commit(tmp_path)
    assert tracking.run_description(load_params(tmp_path / "params.yaml"), tmp_path).startswith(f"Same params as {commit[:7]}.")
    text = (tmp_path / "params.yaml").read_text()
    (tmp_path / "params.yaml").write_text(text.replace("cbam: false", "cbam: true").replace("lr: 0.003", "lr: 0.001"))
    description = tracking.run_description(load_params(tmp_path / "params.yaml"), tmp_path)
    assert description.startswith(f"Changed against {commit[:7]}: `model.cbam`: false → true; `train.lr`: 0.003 → 0.001\n")


def test_a_queued_experiment_keeps_its_artifacts_beside_the_store_after_its_copy_is_deleted(tmp_path: Path, monkeypatch):
    # `dvc exp run --queue` runs each stage in <project>/.dvc/tmp/exps/<tmp>/ with DVC_ROOT set to
    # that copy, and deletes the copy afterwards. MLflow's default artifact root is mlruns/ in the
    # working directory (and set_tracking_uri sets MLFLOW_TRACKING_URI, so the old check for the
    # variable never chose the store's folder): every per-image CSV, plot and model was lost.
    project = tmp_path / "project"
    copy = project / ".dvc" / "tmp" / "exps" / "tmpabc123"
    copy.mkdir(parents=True)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(copy))
    monkeypatch.chdir(copy)
    (copy / "per_image.csv").write_text("id,iou\na,0.5\n")
    tracker = tracking.Tracker()
    assert tracker.uri == f"sqlite:///{project / 'mlflow.db'}"
    tracker.start("queued", None, {"train": {"lr": 0.1}}, {})
    tracker.log_artifact(copy / "per_image.csv", "eval")
    tracker.end()
    assert tracker.enabled
    monkeypatch.chdir(tmp_path)
    shutil.rmtree(copy)
    client = mlflow.MlflowClient(tracker.uri)
    assert client.get_experiment_by_name("queued").artifact_location == (project / "mlruns").as_uri()
    downloaded = client.download_artifacts(tracker.run_id, "eval/per_image.csv", str(tmp_path))
    assert Path(downloaded).read_text() == "id,iou\na,0.5\n"


def test_an_experiment_whose_artifacts_lie_in_a_deleted_dvc_copy_is_named_in_a_warning(tmp_path: Path, mlflow_env):
    uri = tracking.tracking_uri()
    lost = (tmp_path / "p" / ".dvc" / "tmp" / "exps" / "tmpx" / "mlruns").as_uri()
    mlflow.MlflowClient(uri).create_experiment("old", artifact_location=lost)
    tracker = tracking.Tracker()
    with pytest.warns(UserWarning, match="'old' keeps its artifacts in .*deletes after a queued run"):
        tracker.start("old", None, {}, {})
    tracker.end()
    tracker = tracking.Tracker()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tracker.start("fresh", None, {}, {})
        tracker.end()
