"""The checkpoint format, owned here: `checkpoint_contents` defines it, `save_checkpoint` writes it,
`load_model` turns a file back into the model, its class names and its input size.

A checkpoint carries its own config (the model section, classes, input size, how it was sampled
and all params), so `evaluate` and `predict` rebuild and feed the model from the file alone: a
letterbox model gets whole letterboxed images, a patch model smoothly blended tiles cut at its
training scale. It is a plain dict of tensors,
numbers, strings, lists and dicts, so it loads with `torch.load(weights_only=True)`, which cannot
run code hidden in a file.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from segpipe.data.spec import InputSpec, spec_from_dict, spec_from_old_checkpoint
from segpipe.errors import SegpipeError
from segpipe.imageio import atomic_write
from segpipe.models.registry import build_model
from segpipe.models.unet import UNet

FORMAT_VERSION = 1
# What `checkpoint_contents` writes about the model; everything else in a checkpoint is the state
# only a resume needs (optimizer, scheduler, scaler, RNG, history).
MODEL_KEYS = ("format", "model", "model_args", "classes", "input", "params")


@dataclass(frozen=True)
class LoadedModel:
    """A model rebuilt from a checkpoint, with what it needs to be fed."""

    model: UNet
    classes: tuple[str, ...]
    spec: InputSpec  # how it is fed: whole letterboxed images, or patches at a scale
    params: dict[str, Any]  # every setting it was trained with (params.yaml as JSON)

    @property
    def image_size(self) -> int:
        """The square side the model is fed: the letterbox canvas, or the patch side."""
        return self.spec.size


def checkpoint_contents(
    model: UNet,
    spec: InputSpec,
    classes: Sequence[str],
    params: Mapping[str, Any],
    training: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The checkpoint of `model`.

    Args:
        spec: how the model is fed (`data.spec.spec_from_train`), stored once under "input".
        classes: base.classes.
        params: every setting it was trained with, as JSON (`Params.model_dump(mode="json")`).
        training: the state a resume needs (epoch, optimizer, scheduler, RNG, history); None for a
            checkpoint that is only for prediction.
    """
    return {
        "format": FORMAT_VERSION,
        "model": model.state_dict(),
        "model_args": model.model_args(),
        "classes": list(classes),
        "input": spec.to_dict(),
        "params": dict(params),
        **(training or {}),
    }


def save_checkpoint(path: Path, contents: Mapping[str, Any]) -> None:
    """Write checkpoint contents through a temporary file and a rename, so a crash never leaves half a file."""
    atomic_write(path, lambda tmp: torch.save(dict(contents), tmp))


def write_deployment_checkpoint(source: Path, destination: Path) -> Path:
    """Copy the checkpoint `source` to `destination` without its training state: the model, its
    arguments, classes, input size and params, all that `predict` and `evaluate` read (a third of
    the size with Adam's two moments gone). Returns `destination`."""
    checkpoint = load_checkpoint(source)
    save_checkpoint(destination, {key: checkpoint[key] for key in MODEL_KEYS if key in checkpoint})
    return Path(destination)


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A checkpoint's contents, loaded safely; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise SegpipeError(f"{path}: checkpoint not found; run the train stage first")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for a corrupt or foreign file
        raise SegpipeError(f"{path}: not a readable segpipe checkpoint ({exc})") from None
    if not isinstance(checkpoint, dict) or "model_args" not in checkpoint or "model" not in checkpoint:
        raise SegpipeError(f"{path}: not a segpipe checkpoint (no model_args/model entries)")
    return checkpoint


def model_from_checkpoint(checkpoint: Mapping[str, Any]) -> UNet:
    """Rebuild the network described by checkpoint contents and load its weights (no pretrained download)."""
    args = dict(checkpoint["model_args"])
    num_classes = args.pop("num_classes")
    model = build_model(num_classes, **{**args, "pretrained": "none"})
    model.load_state_dict(checkpoint["model"])
    return model


def checkpoint_spec(checkpoint: Mapping[str, Any], path: Path) -> InputSpec:
    """The input spec of checkpoint contents; checkpoints written before specs (image_size +
    sampling + params) are mapped to one. Errors name the file."""
    try:
        if "input" in checkpoint:
            return spec_from_dict(checkpoint["input"])
        return spec_from_old_checkpoint(checkpoint)
    except (KeyError, ValueError) as exc:
        raise SegpipeError(f"{path}: {exc}; re-train the model or re-save the checkpoint") from None


def load_model(path: Path) -> LoadedModel:
    """The model in a checkpoint file (on the CPU), its class names, input spec and params."""
    checkpoint = load_checkpoint(path, map_location="cpu")
    return LoadedModel(
        model=model_from_checkpoint(checkpoint),
        classes=tuple(checkpoint["classes"]),
        spec=checkpoint_spec(checkpoint, Path(path)),
        params=dict(checkpoint.get("params", {})),
    )
