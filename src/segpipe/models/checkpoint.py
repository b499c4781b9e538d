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
# model_args besides num_classes: `build_model`'s keyword arguments and their types.
MODEL_ARG_TYPES = {"backbone": str, "base_channels": int, "cbam": bool, "cbam_reduction": int, "cbam_kernel": int, "pretrained": str}
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
    """Write checkpoint contents through a temporary file and a rename, so a crash never leaves half a file.

    Raises:
        SegpipeError naming the path when the folder is full or read-only (the old file is kept).
    """
    path = Path(path)
    try:
        atomic_write(path, lambda tmp: torch.save(dict(contents), tmp))
    except (OSError, RuntimeError) as exc:
        # torch's zip writer reports a full disk or an unopenable file as RuntimeError
        # ("[enforce fail at inline_container.cc:671] . unexpected pos ..."); any other
        # RuntimeError is not about the file, so it is not ours to name.
        if isinstance(exc, RuntimeError) and "inline_container" not in str(exc) and "Parent directory" not in str(exc):
            raise
        if isinstance(exc, OSError):
            reason = exc.strerror or str(exc)
        else:
            reason = f"torch: {str(exc).splitlines()[0]}; is the disk full or the folder read-only?"
        raise SegpipeError(
            f"{path}: cannot write the checkpoint ({reason}); free space on or make writable {path.parent} "
            f"and run again{' (with train.resume: true to continue)' if path.name != 'best.pt' else ''}; "
            f"the previous {path.name}, if any, is kept whole"
        ) from None


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
    if not isinstance(checkpoint, dict) or "model_args" not in checkpoint or not isinstance(checkpoint.get("model"), dict):
        raise SegpipeError(f"{path}: not a segpipe checkpoint (no model_args/model entries)")
    check_finite_weights(path, checkpoint["model"])
    return checkpoint


def check_finite_weights(path: Path, weights: Mapping[str, Any]) -> None:
    """Refuse weights holding NaN or infinity (a diverged run's): they predict a constant class
    with exit 0, which looks like a result."""
    bad = [name for name, value in weights.items()
           if isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all())]
    if bad:
        shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise SegpipeError(
            f"{path}: the weights hold NaN or infinite values ({shown}): the run that wrote it diverged. "
            "Train again with a lower train.lr or train.grad_clip, or use an earlier checkpoint"
        )


def model_from_checkpoint(checkpoint: Mapping[str, Any]) -> UNet:
    """Rebuild the network described by checkpoint contents and load its weights (no pretrained download)."""
    args = dict(checkpoint["model_args"])
    num_classes = args.pop("num_classes")
    model = build_model(num_classes, **{**args, "pretrained": "none"})
    model.load_state_dict(checkpoint["model"])
    return model


def checked_model(path: Path, checkpoint: Mapping[str, Any]) -> tuple[UNet, tuple[str, ...]]:
    """`model_from_checkpoint` and the class names, every inconsistency one SegpipeError naming
    `path`: no or bad `classes`, a bad `model_args` field, weights that do not fit model_args."""
    classes, args = checkpoint.get("classes"), checkpoint["model_args"]
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise SegpipeError(f"{path}: the checkpoint has no list of class names (`classes`: {classes!r}); "
                           "it was not written by the train stage, or was edited: train again")
    if not isinstance(args, dict) or type(args.get("num_classes")) is not int or args["num_classes"] != len(classes):
        given = args.get("num_classes") if isinstance(args, dict) else args
        raise SegpipeError(f"{path}: model_args num_classes {given!r} does not match its {len(classes)} class names "
                           f"{classes}; the checkpoint is inconsistent: train again")
    wrong = [f"{key}: {args[key]!r} is not {kind.__name__}" for key, kind in MODEL_ARG_TYPES.items()
             if key in args and type(args[key]) is not kind]
    wrong += [f"{key}: missing" for key in MODEL_ARG_TYPES if key not in args and key != "pretrained"]
    wrong += [f"{key}: unknown" for key in args if key not in MODEL_ARG_TYPES and key != "num_classes"]
    if wrong:
        raise SegpipeError(f"{path}: bad model_args ({'; '.join(wrong)}); the checkpoint was edited or is damaged: train again")
    try:
        return model_from_checkpoint(checkpoint), tuple(classes)
    except SegpipeError as exc:  # e.g. an unknown backbone
        raise SegpipeError(f"{path}: {exc}") from None
    except RuntimeError as exc:  # load_state_dict: missing, unexpected or mis-shaped tensors
        described = ", ".join(f"{k} {args.get(k)!r}" for k in ("backbone", "base_channels", "cbam"))
        raise SegpipeError(
            f"{path}: the weights do not fit the model its model_args describe ({described}): "
            f"{_first_problem(exc)}; "
            "the file mixes two models (edited or assembled by hand): use a checkpoint the train stage wrote"
        ) from None


def _first_problem(exc: RuntimeError) -> str:
    """The first line of load_state_dict's list of problems, shortened (it lists every key)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    line = lines[1] if len(lines) > 1 else lines[0] if lines else "load_state_dict failed"
    return line if len(line) <= 200 else line[:200] + " ..."


def checkpoint_spec(checkpoint: Mapping[str, Any], path: Path) -> InputSpec:
    """The input spec of checkpoint contents; checkpoints written before specs (image_size +
    sampling + params) are mapped to one. Errors name the file."""
    try:
        if "input" in checkpoint:
            return spec_from_dict(checkpoint["input"])
        return spec_from_old_checkpoint(checkpoint)
    except (KeyError, TypeError, AttributeError) as exc:  # an entry missing or of the wrong type
        raise SegpipeError(f"{path}: its input size entry (input, or image_size and sampling) is missing or "
                           f"malformed ({type(exc).__name__}: {exc}); re-train the model or re-save the checkpoint") from None
    except (ValueError, SegpipeError) as exc:
        raise SegpipeError(f"{path}: {exc}; re-train the model or re-save the checkpoint") from None


def load_model(path: Path) -> LoadedModel:
    """The model in a checkpoint file (on the CPU), its class names, input spec and params."""
    checkpoint = load_checkpoint(path, map_location="cpu")
    model, classes = checked_model(path, checkpoint)
    return LoadedModel(
        model=model,
        classes=classes,
        spec=checkpoint_spec(checkpoint, Path(path)),
        params=dict(checkpoint.get("params", {})),
    )
