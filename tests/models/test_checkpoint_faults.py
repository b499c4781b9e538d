"""Checkpoints that must not load: weights holding NaN or infinity, weights that do not fit their
model_args, no class names, a malformed model_args field; and a checkpoint folder that refuses the
write. Each is one SegpipeError naming the file, in every consumer (predict, evaluate, serve)."""

from __future__ import annotations

import errno
import re
from pathlib import Path

import pytest
import torch

from segpipe.config import EvaluateSection
from segpipe.errors import SegpipeError
from segpipe.evaluation.evaluate import EvalOutputs, evaluate
from segpipe.inference.prediction import predict_paths
from segpipe.inference.predictor import Predictor
from segpipe.layout import samples_in
from segpipe.models import build_model
from segpipe.models import checkpoint as checkpoint_module
from segpipe.models.checkpoint import load_checkpoint, load_model, save_checkpoint
from segpipe.serving.service import ModelService
from tests.helpers import make_processed, tiny_checkpoint


def consumers(tmp_path: Path):
    """Every way a user loads a checkpoint: predict, evaluate and serve."""
    processed = make_processed(tmp_path / "processed", count=1)
    samples = samples_in(processed, ["img000"])
    outputs = EvalOutputs(*(tmp_path / "eval" / name for name in ("m.json", "i.json", "c.csv", "p.csv", "u.csv", "plots")))
    return {
        "predict": lambda path: predict_paths(path, [str(processed / "images")], tmp_path / "predictions", progress=False),
        "evaluate": lambda path: evaluate(path, samples, outputs, EvaluateSection(device="cpu"), progress=False),
        "serve": lambda path: ModelService(path),
    }


def edited(path: Path, edit) -> Path:
    checkpoint = torch.load(path, weights_only=True)
    edit(checkpoint)
    torch.save(checkpoint, path)
    return path


def poison(value: float):
    def edit(checkpoint) -> None:
        name = next(k for k, v in checkpoint["model"].items() if v.is_floating_point())
        checkpoint["model"][name].view(-1)[3] = value

    return edit


def weights_of(model_args: dict):
    """Replace the weights with those of another architecture, keeping model_args."""

    def edit(checkpoint) -> None:
        args = {**checkpoint["model_args"], **model_args}
        num_classes = args.pop("num_classes")
        checkpoint["model"] = build_model(num_classes, **args).state_dict()

    return edit


def without_classes(checkpoint) -> None:
    del checkpoint["classes"]


def non_integer_width(checkpoint) -> None:
    checkpoint["model_args"]["base_channels"] = 4.5


def three_class_names(checkpoint) -> None:
    checkpoint["classes"] = ["background", "lesion", "hair"]


def no_input_size(checkpoint) -> None:
    del checkpoint["input"]  # then read as a checkpoint from before input specs, without image_size


def input_not_a_mapping(checkpoint) -> None:
    checkpoint["input"] = [32]


FAULTS = {
    "nan weight": (poison(float("nan")), r"the weights hold NaN or infinite values \(encoder\."),
    "inf weight": (poison(float("inf")), r"the weights hold NaN or infinite values"),
    "wider weights": (weights_of({"base_channels": 8}), r"the weights do not fit the model its model_args describe \(backbone 'plain', base_channels 4, cbam False\): size mismatch"),
    "cbam weights": (weights_of({"cbam": True}), r"the weights do not fit .*cbam False\): Unexpected key"),
    "vgg16 weights": (weights_of({"backbone": "vgg16"}), r"the weights do not fit .*backbone 'plain'"),
    "no classes": (without_classes, r"the checkpoint has no list of class names \(`classes`: None\)"),
    "non-integer width": (non_integer_width, r"bad model_args \(base_channels: 4\.5 is not int\)"),
    "no input size": (no_input_size, r"its input size entry \(input, or image_size and sampling\) is missing or malformed \(KeyError: 'image_size'\)"),
    "input not a mapping": (input_not_a_mapping, r"its input size entry .* is missing or malformed \(TypeError"),
    "classes and num_classes disagree": (three_class_names, r"model_args num_classes 2 does not match its 3 class names \['background', 'lesion', 'hair'\]"),
}


@pytest.mark.parametrize(("edit", "message"), FAULTS.values(), ids=FAULTS.keys())
def test_a_bad_checkpoint_is_one_error_naming_it_in_predict_evaluate_and_serve(tmp_path: Path, edit, message):
    path = edited(tiny_checkpoint(tmp_path / "best.pt"), edit)
    expected = rf"{re.escape(str(path))}: {message}"
    with pytest.raises(SegpipeError, match=expected):
        load_model(path)
    for name, load in consumers(tmp_path).items():
        with pytest.raises(SegpipeError, match=expected):
            load(path)
    assert not (tmp_path / "predictions").exists() and not (tmp_path / "eval").exists()


def test_nan_weights_are_refused_also_where_training_resumes(tmp_path: Path):
    path = edited(tiny_checkpoint(tmp_path / "last.pt"), poison(float("nan")))
    with pytest.raises(SegpipeError, match=rf"{re.escape(str(path))}: the weights hold NaN"):
        load_checkpoint(path)
    assert Predictor.from_checkpoint(tiny_checkpoint(tmp_path / "good.pt")).classes == ["background", "lesion"]  # a finite one loads


def test_a_full_checkpoint_folder_is_named_with_torchs_own_write_error(tmp_path: Path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"model": {}, "model_args": {}, "epoch": 1})
    # torch's zip writer on a full disk: /dev/full fails every write with ENOSPC
    monkeypatch.setattr(checkpoint_module, "atomic_write", lambda target, write: write(Path("/dev/full")))
    with pytest.raises(SegpipeError, match=rf"{re.escape(str(path))}: cannot write the checkpoint \(torch: .*inline_container.*"
                                           rf"disk full .* free space on or make writable {re.escape(str(tmp_path))}"):
        save_checkpoint(path, {"model": {"w": torch.zeros(10_000)}, "model_args": {}, "epoch": 2})
    assert torch.load(path, weights_only=True)["epoch"] == 1


def test_a_read_only_checkpoint_folder_is_named_and_the_old_file_kept(tmp_path: Path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"model": {}, "model_args": {}, "epoch": 1})

    def read_only(target, write):
        raise OSError(errno.EROFS, "Read-only file system", str(target))

    monkeypatch.setattr(checkpoint_module, "atomic_write", read_only)
    with pytest.raises(SegpipeError, match=rf"{re.escape(str(path))}: cannot write the checkpoint \(Read-only file system\)"):
        save_checkpoint(path, {"model": {}, "model_args": {}, "epoch": 2})
    assert torch.load(path, weights_only=True)["epoch"] == 1
