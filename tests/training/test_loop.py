"""The training loop: it learns, resumes bit for bit, freezes the encoder, and stops on NaN."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from segpipe.errors import SegpipeError
from segpipe.training import loop
from segpipe.models.checkpoint import load_checkpoint, model_from_checkpoint
from segpipe.training.optim import LrSchedule
from segpipe.training.loop import fit
from tests.helpers import Interrupt, state_snapshot, tiny_params, tiny_samples


def test_a_tiny_run_overfits_two_images(samples, tmp_path: Path):
    params = tiny_params({"epochs": 60, "lr": 0.05, "scheduler": "none", "eval_period": 10})
    state = fit(params, samples, samples, tmp_path / "models", progress=False)
    assert state.history[0]["val_miou"] is None  # eval_period 10
    assert state.history[9]["val_miou"] < 0.9 < state.history[-1]["val_miou"]
    assert state.best_miou == max(r["val_miou"] for r in state.history if r["val_miou"] is not None)


RESUME_CASES = {
    "plain": ({}, [2]),
    "across the unfreeze": ({"freeze_epochs": 2, "freeze_batch_size": 3}, [1, 2]),
    "online augment": ({"online_augment": True}, [2]),
    "patches": (
        {"sampling": "patches", "patch_size": 16, "patch_scale": 0.75, "patches_per_image": 2,
         "patch_class_balance": 0.5, "online_augment": True},
        [1, 3],
    ),
}


@pytest.mark.parametrize("settings, interrupt_after", RESUME_CASES.values(), ids=RESUME_CASES.keys())
def test_a_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(tmp_path: Path, settings, interrupt_after):
    # 3 images in batches of 2: a partial last batch; cosine with warm-up: a schedule to restore.
    samples = tiny_samples(tmp_path / "processed", count=3)
    train = {"epochs": 4, "lr": 0.01, "warmup_epochs": 1, **settings}
    reference = fit(tiny_params(train), samples, samples[:1], tmp_path / "reference", progress=False)
    for after in interrupt_after:
        models = tmp_path / f"interrupted_{after}"
        with pytest.raises(KeyboardInterrupt):
            fit(tiny_params(train), samples, samples[:1], models, progress=False, on_epoch_end=Interrupt(after))
        assert load_checkpoint(models / "last.pt")["epoch"] == after
        resumed = fit(tiny_params({**train, "resume": True}), samples, samples[:1], models, progress=False)
        assert resumed.epoch == 4
        assert resumed.history == reference.history
        expected, actual = reference.model.state_dict(), resumed.model.state_dict()
        assert expected.keys() == actual.keys()
        for key in expected:
            assert torch.equal(expected[key], actual[key]), f"{key} differs after resuming from epoch {after}"
        assert resumed.optimizer.param_groups[0]["lr"] == reference.optimizer.param_groups[0]["lr"]


def test_the_frozen_phase_trains_only_the_decoder_with_its_own_batch_size(tmp_path: Path, monkeypatch):
    samples = tiny_samples(tmp_path / "processed", count=4)
    params = tiny_params({"epochs": 3, "freeze_epochs": 2, "freeze_batch_size": 4, "batch_size": 2, "lr": 0.01})
    phases = []  # (epoch, encoder frozen, batch size of the loader)
    original = loop.train_one_epoch

    def recording(state, net, loader, *args, **kwargs):
        phases.append((state.epoch + 1, state.model.encoder_frozen, loader.batch_size))
        return original(state, net, loader, *args, **kwargs)

    monkeypatch.setattr(loop, "train_one_epoch", recording)
    snapshots = {}
    fit(params, samples, samples[:1], tmp_path / "models", progress=False,
        on_epoch_end=lambda state: snapshots.setdefault(state.epoch, state_snapshot(state.model)))
    assert phases == [(1, True, 4), (2, True, 4), (3, False, 2)]

    def changed(before: dict, after: dict, prefix: str) -> set[str]:
        return {k for k in before if k.startswith(prefix) and not torch.equal(before[k], after[k])}

    encoder = {k for k in snapshots[1] if k.startswith("encoder.")}
    running_stats = {k for k in encoder if "running_" in k}
    assert running_stats  # the plain encoder has BatchNorm layers
    # Epoch 2 is frozen: no encoder tensor moves (weights or BN statistics); the decoder learns.
    assert changed(snapshots[1], snapshots[2], "encoder.") == set()
    assert changed(snapshots[1], snapshots[2], "decoder.")
    assert changed(snapshots[1], snapshots[2], "head.")
    # Epoch 3 trains everything: encoder weights and statistics move.
    after_unfreeze = changed(snapshots[2], snapshots[3], "encoder.")
    assert any("running_" not in k for k in after_unfreeze)
    assert running_stats & after_unfreeze


def test_a_non_finite_loss_stops_with_the_epoch_and_keeps_the_last_good_checkpoint(samples, tmp_path, monkeypatch):
    diverged = {"now": False}
    real_make_loss = loop.make_loss

    class DivergingLoss(torch.nn.Module):
        """The real loss until `diverged`, then NaN: a model whose training blew up."""

        def __init__(self, loss: torch.nn.Module) -> None:
            super().__init__()
            self.loss = loss

        def forward(self, logits, target):
            value = self.loss(logits, target)
            return value * float("nan") if diverged["now"] else value

    monkeypatch.setattr(loop, "make_loss", lambda params: DivergingLoss(real_make_loss(params)))
    models = tmp_path / "models"
    params = tiny_params({"epochs": 3})
    with pytest.raises(SegpipeError, match=r"nan at epoch 2, batch 1.*train\.lr"):
        fit(params, samples, samples, models, progress=False, on_epoch_end=lambda s: diverged.update(now=True))
    checkpoint = load_checkpoint(models / "last.pt")
    assert checkpoint["epoch"] == 1
    model = model_from_checkpoint(checkpoint).eval()
    assert torch.isfinite(model(torch.randn(1, 3, 32, 32))).all()


def test_image_size_off_the_model_stride_is_refused_with_a_size_that_works(samples, tmp_path: Path):
    with pytest.raises(SegpipeError, match=r"train\.image_size 40 must be a multiple of 16 .*try 48"):
        fit(tiny_params({"image_size": 40}), samples, samples, tmp_path / "models", progress=False)


def test_patch_size_off_the_model_stride_is_refused_even_without_a_load_time_check(samples, tmp_path: Path):
    # tiny_params does not pass the registry's stride to the params loader; fit still refuses.
    params = tiny_params({"sampling": "patches", "patch_size": 24, "image_size": 40})
    with pytest.raises(SegpipeError, match=r"train\.patch_size 24 must be a multiple of 16 .*try 32"):
        fit(params, samples, samples, tmp_path / "models", progress=False)


@pytest.mark.parametrize("model", [{"base_channels": 8}, {"cbam": True}], ids=["wider", "cbam"])
def test_resuming_with_other_model_settings_is_refused(samples, tmp_path: Path, model):
    models = tmp_path / "models"
    fit(tiny_params({"epochs": 1}), samples, samples, models, progress=False)
    with pytest.raises(SegpipeError, match=r"last\.pt: cannot resume, it was trained with other model settings"):
        fit(tiny_params({"epochs": 2, "resume": True}, model=model), samples, samples, models, progress=False)


def test_lr_schedule_warms_up_then_follows_a_cosine_to_the_floor():
    schedule = LrSchedule(tiny_params({"epochs": 5, "warmup_epochs": 1, "min_lr_ratio": 0.1}).train)
    factors = [schedule(epoch) for epoch in range(5)]
    # epoch 0 warms up at (0 + 1) / (1 + 1); then a half cosine over the other 4 epochs from 1 towards 0.1
    expected = [0.5] + [0.1 + 0.9 * 0.5 * (1 + torch.cos(torch.tensor(torch.pi * i / 4)).item()) for i in range(4)]
    assert factors == pytest.approx(expected)
    step = LrSchedule(tiny_params({"scheduler": "step", "step_size": 2, "step_gamma": 0.5}).train)
    assert [step(e) for e in range(5)] == [1, 1, 0.5, 0.5, 0.25]
