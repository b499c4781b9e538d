"""Publishing a checkpoint as a registered MLflow Model, promoting it, and loading it back."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from pipeline.app import app

from segpipe.errors import SegpipeError
from segpipe.experiments.registry import check_alias, checkpoint_from_uri, promote, publish_model
from segpipe.inference.prediction import PredictOptions, predict_paths
from segpipe.models.checkpoint import load_checkpoint
from segpipe import tracking
from tests.helpers import free_port, png_bytes, random_image, tiny_checkpoint, use_tmp_mlflow

MODEL = "segpipe-test"


def finished_run(name: str | None, client: MlflowClient) -> str:
    """A finished run in experiment MODEL, tagged as DVC experiment `name`."""
    experiment = client.get_experiment_by_name(MODEL)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(MODEL)
    run = client.create_run(experiment_id, run_name=name, tags={"dvc.exp_name": name} if name else {})
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def trained_models_dir(root: Path, run_id: str, seed: int = 0) -> Path:
    """models/ as the train stage leaves it: best.pt (with training state) and the run id file."""
    models = root / "models"
    tiny_checkpoint(models / "best.pt", seed=seed)
    checkpoint = torch.load(models / "best.pt", weights_only=True)
    checkpoint.update(epoch=3, optimizer={"state": {}, "param_groups": []}, rng={"torch": torch.get_rng_state()})
    torch.save(checkpoint, models / "best.pt")
    (models / tracking.RUN_ID_FILE).write_text(run_id + "\n")
    return models


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """One temporary store with runs `exp-a` and `exp-b`, each with a published model (versions 1, 2)."""
    root = tmp_path_factory.mktemp("registry")
    with pytest.MonkeyPatch.context() as monkeypatch:
        use_tmp_mlflow(monkeypatch, root)
        mlflow.set_tracking_uri(tracking.tracking_uri())
        client = MlflowClient(tracking_uri=tracking.tracking_uri())
        runs, models, versions = {}, {}, {}
        for seed, name in enumerate(("exp-a", "exp-b")):
            runs[name] = finished_run(name, client)
            models[name] = trained_models_dir(root / name, runs[name], seed=seed)
            versions[name] = publish_model(models[name], MODEL)
        yield {"client": client, "runs": runs, "models": models, "versions": versions, "root": root}


def predicted_mask(checkpoint: Path, data: bytes, folder: Path) -> bytes:
    """The mask file `predict` writes for the image `data`."""
    (folder / "in").mkdir(parents=True)
    (folder / "in" / "photo.png").write_bytes(data)
    assert predict_paths(checkpoint, [str(folder / "in")], folder / "out", PredictOptions(), progress=False).ok
    return (folder / "out" / "photo.png").read_bytes()


def test_publish_registers_one_version_per_run_tagged_with_the_dvc_experiment(registry):
    client = registry["client"]
    assert registry["versions"] == {"exp-a": "1", "exp-b": "2"}
    for name, number in registry["versions"].items():
        version = client.get_model_version(MODEL, number)
        assert (version.run_id, version.tags["dvc.exp_name"]) == (registry["runs"][name], name)


def test_published_checkpoint_has_no_training_state(registry, tmp_path):
    path = checkpoint_from_uri(f"runs:/{registry['runs']['exp-a']}/model", tmp_path)
    published_keys = set(load_checkpoint(path))
    trained_keys = set(load_checkpoint(registry["models"]["exp-a"] / "best.pt"))
    assert {"optimizer", "epoch", "rng"} <= trained_keys - published_keys
    assert {"model", "model_args", "classes", "input", "params"} <= published_keys


def test_promote_by_experiment_name_sets_the_alias_that_loads_the_same_masks(registry, tmp_path):
    client = registry["client"]
    assert str(promote("exp-a", "champion", client, MODEL, MODEL).version) == "1"
    assert client.get_model_version_by_alias(MODEL, "champion").run_id == registry["runs"]["exp-a"]
    data = png_bytes(random_image(30, 41))
    model = mlflow.pyfunc.load_model(f"models:/{MODEL}@champion")
    masks = model.predict(pd.DataFrame({"image": [data]}))["mask"]
    assert masks[0] == predicted_mask(registry["models"]["exp-a"] / "best.pt", data, tmp_path)


def test_promote_by_run_id_moves_the_alias(registry):
    client = registry["client"]
    promote(registry["runs"]["exp-b"], "candidate", client, MODEL, MODEL)
    assert client.get_model_version_by_alias(MODEL, "candidate").version == 2
    promote("exp-a", "candidate", client, MODEL, MODEL)
    assert client.get_model_version_by_alias(MODEL, "candidate").version == 1


def test_promote_errors_name_the_runs_that_exist(registry):
    client = registry["client"]
    with pytest.raises(SegpipeError, match=r"no run named 'nope'.*exp-a"):
        promote("nope", "champion", client, MODEL, MODEL)
    finished_run("unpublished", client)
    with pytest.raises(SegpipeError, match=r"'unpublished'.*has no version of registered model 'segpipe-test'"):
        promote("unpublished", "champion", client, MODEL, MODEL)


def test_publishing_failure_is_one_warning_and_never_an_exception(registry, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{registry['root']}/mlflow.db")
    models = trained_models_dir(tmp_path, "0" * 32)  # a run id the store does not have
    with pytest.warns(UserWarning, match="publishing the model to MLflow failed"):
        assert publish_model(models, MODEL) is None
    (models / tracking.RUN_ID_FILE).unlink()  # tracking was off: nothing to publish, nothing to say
    assert publish_model(models, MODEL) is None


def test_unknown_model_uri_is_a_clear_error(registry, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{registry['root']}/mlflow.db")
    with pytest.raises(SegpipeError, match=r"cannot fetch MLflow model 'models:/missing@champion'"):
        checkpoint_from_uri("models:/missing@champion", tmp_path)


@pytest.mark.slow  # starting MLflow's server and loading the model take about 25 s
def test_mlflow_models_serve_answers_with_the_mask_predict_writes(registry, tmp_path):
    """`mlflow models serve -m models:/NAME@champion --env-manager local`, as a user would run it."""
    promote("exp-a", "champion", registry["client"], MODEL, MODEL)
    data = png_bytes(random_image(36, 28, seed=3))
    expected = predicted_mask(registry["models"]["exp-a"] / "best.pt", data, tmp_path)
    port = free_port()
    bin_dir = Path(sys.executable).parent
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": "",  # segpipe must come from the model's own code
        "MLFLOW_TRACKING_URI": f"sqlite:///{registry['root']}/mlflow.db",
    }
    command = [str(bin_dir / "mlflow"), "models", "serve", "-m", f"models:/{MODEL}@champion",
               "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)]
    server = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_until_up(f"http://127.0.0.1:{port}/ping", server, timeout=90)
        body = json.dumps({"dataframe_split": {"columns": ["image"], "data": [[base64.b64encode(data).decode()]]}})
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body.encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            answer = json.loads(response.read())
    finally:
        server.kill()
        server.communicate(timeout=30)
    assert base64.b64decode(answer["predictions"][0]["mask"]) == expected


def wait_until_up(url: str, process: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the server exited with {process.returncode}: {process.stdout.read().decode()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.3)
    pytest.fail(f"{url} did not answer within {timeout} s")


def test_promote_command_reports_the_alias_and_fails_cleanly(registry, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{registry['root']}/mlflow.db")
    params = registry["root"] / "params.yaml"
    params.write_text(f"base:\n  experiment: {MODEL}\n")
    result = CliRunner().invoke(app, ["promote", "exp-b", "--alias", "staging", "--params", str(params)])
    assert result.exit_code == 0, result.output
    assert f"version 2 (run {registry['runs']['exp-b']}) is now models:/{MODEL}@staging" in result.output
    assert registry["client"].get_model_version_by_alias(MODEL, "staging").version == 2
    result = CliRunner().invoke(app, ["promote", "no-such-exp", "--params", str(params)])
    assert result.exit_code == 1 and "no run named 'no-such-exp'" in result.output


def test_serve_loads_the_checkpoint_behind_a_model_uri(registry, monkeypatch):
    from segpipe.serving.service import load_service

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{registry['root']}/mlflow.db")
    promote("exp-b", "served", registry["client"], MODEL, MODEL)
    service = load_service(f"models:/{MODEL}@served")
    expected = load_checkpoint(registry["models"]["exp-b"] / "best.pt")["model"]
    weights = service.predictor.model.state_dict()
    assert service.source == f"models:/{MODEL}@served"
    assert all(torch.equal(weights[key], value) for key, value in expected.items())


def test_a_dead_tracking_server_is_checked_first_not_retried(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    models = trained_models_dir(tmp_path, "0" * 32)
    # The short check's warning, not MLflow's failure after minutes of retries.
    with pytest.warns(UserWarning, match="did not answer"):
        assert publish_model(models, MODEL) is None


def test_publishing_prints_no_cloudpickle_warning_and_keeps_other_mlflow_messages(tmp_path, monkeypatch):
    import logging

    use_tmp_mlflow(monkeypatch, tmp_path)
    records: list[logging.LogRecord] = []
    handler = logging.Handler(level=logging.DEBUG)
    handler.emit = records.append
    logger = logging.getLogger("mlflow.pyfunc")
    logger.addHandler(handler)
    try:
        client = MlflowClient(tracking_uri=tracking.tracking_uri())
        assert publish_model(trained_models_dir(tmp_path, finished_run("exp-w", client)), MODEL) == "1"
        logger.warning("Passing a Python object as `python_model` outside publishing")  # not silenced
    finally:
        logger.removeHandler(handler)
    messages = [r.getMessage() for r in records]
    assert not [m for m in messages if "CloudPickle" in m]
    assert messages[-1] == "Passing a Python object as `python_model` outside publishing"


class NoMlflow:
    """A client that fails the test on any use: the alias must be refused before MLflow is asked."""

    def __getattr__(self, name):
        pytest.fail(f"MLflow was called ({name}) before the alias was checked")


@pytest.mark.parametrize(
    ("alias", "rule"),
    [
        ("../../etc", "letters, digits, '_' or '-'"),
        ("has space", "letters, digits, '_' or '-'"),
        ("", "letters, digits, '_' or '-'"),
        ("x" * 256, "1 to 255"),
        ("latest", "reserved by MLflow"),
        ("Latest", "reserved by MLflow"),
        ("v1", "reserved by MLflow"),
        ("V12", "reserved by MLflow"),
    ],
)
def test_a_bad_alias_is_named_with_its_rule_before_any_mlflow_call(alias, rule):
    with pytest.raises(SegpipeError, match=re.escape(f"alias {alias!r}") + ".*" + re.escape(rule)):
        promote("exp-a", alias, NoMlflow(), MODEL, MODEL)


def test_promote_command_refuses_a_path_like_alias_with_exit_1(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    result = CliRunner().invoke(app, ["promote", "exp-a", "--alias", "../../etc", "--params", str(tmp_path / "none.yaml")])
    assert result.exit_code == 1
    assert "alias '../../etc' is not allowed" in result.output and "Traceback" not in result.output


def test_good_aliases_pass_the_check():
    for alias in ("champion", "staging-2", "v1beta", "latest_good", "x" * 255):
        check_alias(alias)
