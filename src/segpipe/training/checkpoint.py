"""Checkpoints that carry their own config: `evaluate` and `predict` rebuild the model from the file alone.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so it loads with
`torch.load(weights_only=True)`, which cannot run code hidden in a file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from segpipe.errors import SegpipeError
from segpipe.imageio import atomic_write
from segpipe.models import UNet, build_model

FORMAT_VERSION = 1


def save_checkpoint(path: Path, checkpoint: dict[str, Any]) -> None:
    """Write a checkpoint through a temporary file and a rename, so a crash never leaves half a file."""
    atomic_write(path, lambda tmp: torch.save({"format": FORMAT_VERSION, **checkpoint}, tmp))


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a segpipe checkpoint safely; errors name the file."""
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


def model_from_checkpoint(checkpoint: dict[str, Any]) -> UNet:
    """Rebuild the network described by a checkpoint and load its weights (no pretrained download)."""
    args = {**checkpoint["model_args"], "pretrained": "none"}
    model = build_model(**args)
    model.load_state_dict(checkpoint["model"])
    return model
