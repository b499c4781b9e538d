"""Training that must stop with a message: divergence (never saved, never best.pt), a resume whose
optimizer or input changed, and a checkpoint folder that refuses writes."""

from __future__ import annotations

import errno
import math
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from segpipe import tracking
from segpipe.errors import SegpipeError
from segpipe.models import checkpoint as checkpoint_module
from segpipe.models.checkpoint import load_checkpoint
from segpipe.training import loop
from segpipe.training import stage as stage_module
from segpipe.training.loop import EpochResult, check_divergence, fit
from segpipe.training.stage import train_stage
from tests.helpers import tiny_params, tiny_samples, train_outputs_in


def test_a_huge_learning_rate_stops_at_its_first_nan_validation_and_saves_nothing(tmp_path: Path, mlflow_env):
    samples = tiny_samples(tmp_path / "processed")
    outputs = train_outputs_in(tmp_path)
    params = tiny_params({"epochs": 3, "lr": 1e6})  # AdamW: the training loss reaches 1e10 within an epoch
    with pytest.raises(SegpipeError, match=r"training diverged at epoch 1: the validation loss became nan; this epoch "
                                           r"is not saved .*Lower train\.lr \(now 1e\+06\) or .*train\.grad_clip \(now 1"):
        train_stage(params, samples, samples, outputs, progress=False)
    assert sorted(p.name for p in outputs.models_dir.iterdir()) == [tracking.RUN_ID_FILE]  # no best.pt, no last.pt
    assert not outputs.metrics.exists() and not outputs.info.exists()  # no best_val_miou of a NaN model
    run = MlflowClient().get_run((outputs.models_dir / tracking.RUN_ID_FILE).read_text().strip())
    assert run.info.status == "FAILED" and "val_miou" not in run.data.metrics


def test_an_exploding_training_loss_stops_the_run_and_the_last_good_epoch_stays_best(tmp_path: Path, monkeypatch):
    samples = tiny_samples(tmp_path / "processed")
    exploded = {"now": False}
    real_make_loss = loop.make_loss

    class ExplodingLoss(torch.nn.Module):
        """The real loss, times 1e4 in training (not validation) once `exploded`: finite, but far off."""

        def __init__(self, loss: torch.nn.Module) -> None:
            super().__init__()
            self.loss = loss

        def forward(self, logits, target):
            value = self.loss(logits, target)
            return value * 1e4 if exploded["now"] and torch.is_grad_enabled() else value

    monkeypatch.setattr(loop, "make_loss", lambda params: ExplodingLoss(real_make_loss(params)))
    models = tmp_path / "models"
    with pytest.raises(SegpipeError, match=r"training diverged at epoch 2: the training loss exploded to [\d.e+]+, "
                                           r"over 1000 x its first epoch's 0\.\d+"):
        fit(tiny_params({"epochs": 3}), samples, samples, models, progress=False, on_epoch_end=lambda s: exploded.update(now=True))
    last, best = load_checkpoint(models / "last.pt"), load_checkpoint(models / "best.pt")
    assert last["epoch"] == last["best_epoch"] == 1 and len(last["history"]) == 1
    # best.pt holds the model alone (only last.pt resumes): epoch 1's weights, as last.pt's.
    assert all(torch.equal(best["model"][key], value) for key, value in last["model"].items())


def row(train_loss: float, val_loss: float | None) -> dict:
    return {"epoch": 1, "train_loss": train_loss, "val_loss": val_loss, "val_miou": 0.5, "lr": 0.01}


@pytest.mark.parametrize(
    ("history", "train_loss", "val_loss", "message"),
    [
        ([], 1e10, math.nan, r"epoch 2: the validation loss became nan"),
        ([row(0.5, 0.4)], 0.3, math.inf, r"the validation loss became inf"),
        ([row(0.5, 0.4)], 500.5, 0.4, r"the training loss exploded to 500\.5, over 1000 x its first epoch's 0\.5"),
        ([row(0.5, None), row(0.4, 0.3)], 0.4, 300.5, r"the validation loss exploded to 300\.5, over 1000 x its first epoch's 0\.3"),
    ],
    ids=["nan val", "inf val", "train x1001", "val x1001.7"],
)
def test_divergence_is_a_non_finite_validation_loss_or_a_loss_over_1000_times_its_first(history, train_loss, val_loss, message):
    cfg = tiny_params().train
    with pytest.raises(SegpipeError, match=message):
        check_divergence(EpochResult(2, train_loss, val_loss, 0.5, 0.01), history, cfg)


def test_losses_up_to_1000_times_their_first_and_epochs_without_validation_pass():
    cfg = tiny_params().train
    check_divergence(EpochResult(1, 1e10, 2.0, 0.5, 0.01), [], cfg)  # nothing to compare the first epoch with
    check_divergence(EpochResult(2, 499.9, None, None, 0.01), [row(0.5, 0.4)], cfg)
    check_divergence(EpochResult(3, 0.1, 399.0, 0.5, 0.01), [row(0.5, None), row(0.4, 0.4)], cfg)


CHANGES = {
    "optimizer": ({}, {"optimizer": "sgd"}, r"train\.optimizer changed from adamw to sgd .*Set train\.optimizer back to adamw"),
    "adam to adamw": ({"optimizer": "adam"}, {"optimizer": "adamw"}, r"train\.optimizer changed from adam to adamw"),
    "image size": ({}, {"image_size": 64}, r"train\.image_size changed from 32 to 64 .*Set train\.image_size back to 32"),
    "sampling": ({}, {"sampling": "patches", "patch_size": 16}, r"train\.sampling changed from letterbox to patches"),
    "patch scale": (
        {"sampling": "patches", "patch_size": 16, "patch_scale": 0.5},
        {"sampling": "patches", "patch_size": 16, "patch_scale": 0.75},
        r"train\.patch_scale changed from 0\.5 to 0\.75",
    ),
}


@pytest.mark.parametrize(("before", "after", "message"), CHANGES.values(), ids=CHANGES.keys())
def test_resuming_after_changing_the_optimizer_or_the_input_is_refused_by_name(tmp_path: Path, before, after, message):
    samples = tiny_samples(tmp_path / "processed")
    models = tmp_path / "models"
    fit(tiny_params({"epochs": 1, **before}), samples, samples, models, progress=False)
    saved = (models / "last.pt").read_bytes()
    with pytest.raises(SegpipeError, match=rf"last\.pt: cannot resume: {message}.*or set train\.resume: false"):
        fit(tiny_params({"epochs": 2, "resume": True, **before, **after}), samples, samples, models, progress=False)
    assert (models / "last.pt").read_bytes() == saved


def test_resuming_with_a_new_learning_rate_and_weight_decay_uses_them(tmp_path: Path):
    samples = tiny_samples(tmp_path / "processed")
    models = tmp_path / "models"
    fit(tiny_params({"epochs": 1, "optimizer": "sgd", "scheduler": "step", "step_size": 1, "step_gamma": 0.5}), samples, samples, models, progress=False)
    settings = {"epochs": 2, "resume": True, "optimizer": "sgd", "scheduler": "step", "step_size": 1, "step_gamma": 0.5,
                "lr": 1e-4, "weight_decay": 0.0, "momentum": 0.5}
    state = fit(tiny_params(settings), samples, samples, models, progress=False)
    # epoch 2 (index 1) ran at 1e-4 x 0.5 ** 1; the state after it is at 1e-4 x 0.5 ** 2
    assert [row["lr"] for row in state.history] == [pytest.approx(3e-3), pytest.approx(5e-5)]
    group = state.optimizer.param_groups[0]
    assert group["lr"] == pytest.approx(2.5e-5) and group["weight_decay"] == 0.0 and group["momentum"] == 0.5


def test_a_checkpoint_folder_that_turns_read_only_stops_naming_it_and_keeps_the_last_epoch(tmp_path: Path, monkeypatch):
    samples = tiny_samples(tmp_path / "processed")
    models = tmp_path / "models"
    real_write = checkpoint_module.atomic_write

    def read_only_from_epoch_2(path, write):
        if path.name == "last.pt" and path.exists():  # epoch 2's save
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        real_write(path, write)

    monkeypatch.setattr(checkpoint_module, "atomic_write", read_only_from_epoch_2)
    with pytest.raises(SegpipeError, match=rf"{models / 'last.pt'}: cannot write the checkpoint \(Read-only file system\); "
                                           rf"free space on or make writable {models}"):
        fit(tiny_params({"epochs": 3}), samples, samples, models, progress=False)
    assert load_checkpoint(models / "last.pt")["epoch"] == 1


def test_a_run_id_file_that_cannot_be_written_is_named_and_the_run_ends_failed(tmp_path: Path, mlflow_env, monkeypatch):
    samples = tiny_samples(tmp_path / "processed")
    outputs = train_outputs_in(tmp_path)

    def read_only(path, text):
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr(stage_module, "atomic_write_text", read_only)
    run_id_file = outputs.models_dir / tracking.RUN_ID_FILE
    with pytest.raises(SegpipeError, match=rf"{run_id_file}: cannot write the MLflow run id \(Read-only file system\)"):
        train_stage(tiny_params({"epochs": 1}), samples, samples, outputs, progress=False)
    runs = MlflowClient().search_runs(MlflowClient().search_experiments()[0].experiment_id)
    assert [run.info.status for run in runs] == ["FAILED"]
