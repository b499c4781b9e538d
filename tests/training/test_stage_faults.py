"""train_stage against bad settings and killed runs: settings checked before any side effect,
checkpoint temporaries of a killed run cleared, and runs left RUNNING closed as KILLED."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from segpipe import tracking
from segpipe.errors import SegpipeError
from segpipe.training import stage as stage_module
from segpipe.training.stage import train_stage
from tests.helpers import dead_pid, tiny_params, tiny_samples, train_outputs_in


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"train": {"image_size": 40}}, r"train\.image_size 40 must be a multiple of 16 .*try 48"),
        ({"model": {"pretrained": "/no/such/weights.pt"}}, r"model\.pretrained: weights file '/no/such/weights\.pt' does not exist"),
        ({"model": {"backbone": "vgg19"}}, r"unknown model\.backbone 'vgg19'"),
        ({"model": {"cbam": True, "cbam_kernel": 4}}, r"kernel"),
    ],
)
def test_bad_settings_are_refused_before_any_run_or_file_exists(tmp_path: Path, mlflow_env, settings, message):
    samples = tiny_samples(tmp_path / "processed")
    outputs = train_outputs_in(tmp_path)
    train = settings.pop("train", {})
    with pytest.raises(SegpipeError, match=message):
        train_stage(tiny_params(train, **settings), samples, samples, outputs, progress=False)
    assert not outputs.models_dir.exists()  # so no mlflow_run_id.txt for a resume or evaluate to find
    assert not mlflow_env.exists()  # MLflow was never started: no FAILED empty run


def test_checkpoint_temporaries_of_a_killed_run_are_cleared_at_start(tmp_path: Path, mlflow_env):
    samples = tiny_samples(tmp_path / "processed")
    outputs = train_outputs_in(tmp_path)
    outputs.models_dir.mkdir()
    stale = outputs.models_dir / f".last.pt.tmp-{dead_pid()}"
    stale.write_bytes(b"half a checkpoint")
    train_stage(tiny_params({"epochs": 1}), samples, samples, outputs, progress=False)
    assert sorted(p.name for p in outputs.models_dir.iterdir()) == ["best.pt", "last.pt", tracking.RUN_ID_FILE]


def test_a_run_left_running_by_a_killed_process_is_marked_killed_by_the_next(tmp_path: Path, mlflow_env):
    samples = tiny_samples(tmp_path / "processed")
    outputs = train_outputs_in(tmp_path)
    train_stage(tiny_params({"epochs": 1}), samples, samples, outputs, progress=False)
    client = MlflowClient()
    finished = (outputs.models_dir / tracking.RUN_ID_FILE).read_text().strip()
    # What a SIGKILL leaves: a run that never ended, named in the run id file.
    orphan = client.create_run(client.get_run(finished).info.experiment_id).info.run_id
    (outputs.models_dir / tracking.RUN_ID_FILE).write_text(orphan + "\n")
    train_stage(tiny_params({"epochs": 1}), samples, samples, outputs, progress=False)
    latest = (outputs.models_dir / tracking.RUN_ID_FILE).read_text().strip()
    assert client.get_run(orphan).info.status == "KILLED"
    assert client.get_run(finished).info.status == "FINISHED"  # a run that ended is left as it was
    assert latest not in (orphan, finished) and client.get_run(latest).info.status == "FINISHED"


def test_a_run_id_unknown_to_the_store_is_left_alone(tmp_path: Path, mlflow_env):
    samples = tiny_samples(tmp_path / "processed")
    outputs = train_outputs_in(tmp_path)
    outputs.models_dir.mkdir()
    (outputs.models_dir / tracking.RUN_ID_FILE).write_text("0123456789abcdef\n")
    train_stage(tiny_params({"epochs": 1}), samples, samples, outputs, progress=False)
    assert MlflowClient().get_run((outputs.models_dir / tracking.RUN_ID_FILE).read_text().strip()).info.status == "FINISHED"


def test_sigterm_during_training_ends_the_run_killed_and_exits_143(tmp_path: Path, mlflow_env, monkeypatch):
    samples = tiny_samples(tmp_path / "processed")
    outputs = train_outputs_in(tmp_path)

    def terminate(state) -> None:
        # Only with a handler in place: SIGTERM's default action would end the test session itself.
        assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, signal.SIG_IGN, None)
        os.kill(os.getpid(), signal.SIGTERM)

    real_fit = stage_module.fit
    monkeypatch.setattr(stage_module, "fit", lambda *args, **kwargs: real_fit(*args, **kwargs, on_epoch_end=terminate))
    with pytest.raises(SystemExit) as info:
        train_stage(tiny_params({"epochs": 3}), samples, samples, outputs, progress=False)
    assert info.value.code == 128 + signal.SIGTERM
    run_id = (outputs.models_dir / tracking.RUN_ID_FILE).read_text().strip()
    assert MlflowClient().get_run(run_id).info.status == "KILLED"
