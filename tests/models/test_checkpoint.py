"""Checkpoints: which files a run keeps, that they load safely, and that they rebuild the model alone."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from segpipe.errors import SegpipeError
from segpipe.models import checkpoint as checkpoint_module
from segpipe.models import build_model
from segpipe.models.checkpoint import (
    MODEL_KEYS,
    checkpoint_contents,
    load_checkpoint,
    load_model,
    model_from_checkpoint,
    save_checkpoint,
    write_deployment_checkpoint,
)
from segpipe.data.spec import LetterboxInput, PatchInput, spec_from_train
from segpipe.inference.predictor import Predictor
from segpipe.training.loop import fit
from tests.helpers import tiny_params, tiny_samples


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 4-epoch run saving epoch_NNN.pt every 2 epochs: (models dir, final state)."""
    root = tmp_path_factory.mktemp("checkpoints")
    samples = tiny_samples(root / "processed")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        state = fit(tiny_params({"epochs": 4, "save_period": 2, "lr": 0.02}), samples, samples, root / "models", progress=False)
    finally:
        torch.set_num_threads(threads)
    return root / "models", state


def test_best_last_and_every_save_period_epochs_are_kept_and_nothing_else(trained):
    models, state = trained
    assert sorted(p.name for p in models.iterdir()) == ["best.pt", "epoch_002.pt", "epoch_004.pt", "last.pt"]
    assert load_checkpoint(models / "last.pt")["epoch"] == 4
    assert load_checkpoint(models / "epoch_002.pt")["epoch"] == 2
    best = load_checkpoint(models / "best.pt")
    assert set(best) == set(MODEL_KEYS)  # the model alone: only last.pt resumes
    mious = [row["val_miou"] for row in state.history]
    assert state.best_epoch == 1 + mious.index(max(mious)) and state.best_miou == max(mious)
    kept = {2: "epoch_002.pt", 4: "epoch_004.pt"}.get(state.best_epoch)
    if kept:  # best.pt holds that epoch's weights
        weights = load_checkpoint(models / kept)["model"]
        assert all(torch.equal(best["model"][name], weights[name]) for name in weights)


def test_checkpoints_load_with_weights_only_and_carry_their_config(trained):
    models, _ = trained
    raw = torch.load(models / "last.pt", map_location="cpu", weights_only=True)
    assert raw["model_args"] == {
        "backbone": "plain", "num_classes": 2, "cbam": False, "cbam_reduction": 16,
        "cbam_kernel": 7, "base_channels": 4, "pretrained": "none",
    }
    assert raw["classes"] == ["background", "lesion"]
    assert raw["input"] == {"mode": "letterbox", "size": 32}
    assert raw["params"]["train"]["save_period"] == 2
    assert [row["epoch"] for row in raw["history"]] == [1, 2, 3, 4]


def test_model_from_checkpoint_rebuilds_the_trained_model_from_the_file_alone(trained):
    models, state = trained
    rebuilt = model_from_checkpoint(load_checkpoint(models / "last.pt")).eval()
    # Training ran channels-last (train.channels_last: auto); the layout is the run's, not the
    # model's, and another layout sums in another order, so compare in the rebuilt one's.
    state.model.eval().to(memory_format=torch.contiguous_format)
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(rebuilt(images), state.model(images))


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary_file(tmp_path: Path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"model": {}, "model_args": {}, "epoch": 1})
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]

    def save_half_then_fail(obj, file):
        Path(file).write_bytes(b"half a checkpoint")
        raise OSError("No space left on device")

    monkeypatch.setattr(checkpoint_module.torch, "save", save_half_then_fail)
    with pytest.raises(SegpipeError, match=rf"{re.escape(str(path))}: cannot write the checkpoint \(No space left on device\)"):
        save_checkpoint(path, {"model": {}, "model_args": {}, "epoch": 2})
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]
    assert load_checkpoint(path)["epoch"] == 1


@pytest.mark.parametrize(
    "content, message",
    [
        (b"not a checkpoint at all", "not a readable segpipe checkpoint"),
        ({"weights": torch.zeros(1)}, r"not a segpipe checkpoint \(no model_args/model entries\)"),
    ],
    ids=["garbage", "foreign dict"],
)
def test_a_file_that_is_no_checkpoint_is_refused_by_name(tmp_path: Path, content, message):
    path = tmp_path / "other.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    with pytest.raises(SegpipeError, match=f"{re.escape(str(path))}: {message}"):
        load_checkpoint(path)


def test_a_missing_checkpoint_says_to_train_first(tmp_path: Path):
    with pytest.raises(SegpipeError, match=r"missing\.pt: checkpoint not found; run the train stage first"):
        load_checkpoint(tmp_path / "missing.pt")


def test_the_deployment_checkpoint_keeps_the_model_and_drops_the_training_state(trained, tmp_path: Path):
    models, _ = trained
    deployed = write_deployment_checkpoint(models / "last.pt", tmp_path / "last.pt")
    contents = torch.load(deployed, map_location="cpu", weights_only=True)
    assert set(contents) == set(MODEL_KEYS)  # no optimizer, scheduler, scaler, RNG or history
    original = load_model(models / "last.pt")
    loaded = load_model(deployed)
    assert (loaded.classes, loaded.image_size, loaded.params) == (original.classes, original.image_size, original.params)
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(loaded.model.eval()(images), original.model.eval()(images))
    assert deployed.stat().st_size < (models / "last.pt").stat().st_size / 2


def contents_of(model, params) -> dict:
    """What training writes for `model` trained with `params`, without the training state."""
    return checkpoint_contents(model, spec_from_train(params.train), params.base.classes, params.model_dump(mode="json"))


def test_model_keys_are_exactly_what_checkpoint_contents_writes_without_training_state(trained):
    models, state = trained
    assert tuple(contents_of(state.model, tiny_params())) == MODEL_KEYS


def test_a_patch_model_stores_its_input_spec_once(tmp_path: Path):
    train = {"sampling": "patches", "patch_size": 16, "patch_scale": 0.5, "image_size": 64, "patches_per_image": 3}
    params = tiny_params(train)
    model = build_model(len(params.base.classes), **params.model.model_dump())
    save_checkpoint(tmp_path / "best.pt", contents_of(model, params))
    raw = load_checkpoint(tmp_path / "best.pt")
    assert raw["input"] == {"mode": "patches", "size": 16, "scale": 0.5, "per_image": 3, "class_balance": 0.33}
    assert "image_size" not in raw and "sampling" not in raw
    loaded = load_model(tmp_path / "best.pt")
    assert loaded.spec == PatchInput(16, 0.5, 3, 0.33) and loaded.image_size == 16


def old_format_checkpoint(path: Path, train: dict, sampling: dict | None) -> Path:
    """A checkpoint as training wrote it before input specs: image_size + sampling + params."""
    params = tiny_params(train)
    contents = contents_of(build_model(2, **params.model.model_dump()), params)
    del contents["input"]
    contents["image_size"] = train.get("patch_size", 32) if sampling else 32
    if sampling is not None:
        contents["sampling"] = sampling
    save_checkpoint(path, contents)
    return path


def test_old_format_patch_checkpoints_keep_loading_with_their_spec(tmp_path: Path):
    train = {"sampling": "patches", "patch_size": 16, "patch_scale": 0.6, "patches_per_image": 2, "patch_class_balance": 0.5}
    path = old_format_checkpoint(tmp_path / "old.pt", train, {"mode": "patches", "patch_size": 16, "patch_scale": 0.6})
    assert load_model(path).spec == PatchInput(16, 0.6, 2, 0.5)
    assert Predictor.from_checkpoint(path).tiling.tile == 26  # floor(16 / 0.6) = floor(26.67)


def test_a_checkpoint_from_before_patch_training_loads_as_a_letterbox_model(tmp_path: Path):
    path = old_format_checkpoint(tmp_path / "old.pt", {}, None)  # no "sampling" at all
    assert load_model(path).spec == LetterboxInput(32)
    assert Predictor.from_checkpoint(path).tiling is None


def test_an_unknown_input_mode_is_refused_by_name(tmp_path: Path):
    params = tiny_params()
    contents = contents_of(build_model(2, **params.model.model_dump()), params)
    save_checkpoint(tmp_path / "odd.pt", {**contents, "input": {"mode": "mosaic", "size": 16}})
    with pytest.raises(SegpipeError, match=r"odd\.pt: unknown input mode 'mosaic', expected letterbox or patches"):
        load_model(tmp_path / "odd.pt")
