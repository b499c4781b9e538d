"""One encoded image in, the mask `predict` writes out: what the web page and the MLflow Model share.

`predict_labels` predicts one decoded image the way `predict` does (whole and letterboxed, or in
smoothly blended windows), and `mask_png` encodes the labels exactly as `predict` saves
`<stem>.png`, so a mask from either is byte for byte the file the CLI writes.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Mapping
from typing import Any

import numpy as np

from segpipe.imageio import read_image
from segpipe.inference.predictor import Predictor, class_map
from segpipe.data.tiling import Tiling, predict_tiled
from segpipe.palette import output_mask

DEFAULT_OVERLAP = 0.25  # `predict --overlap`'s default
# Windows per forward pass, as `predict --batch-size`'s default: a different batch may round
# differently, and the masks must be the bytes `predict` writes.
TILE_BATCH = 8


def decode_image(data: bytes, name: str) -> np.ndarray:
    """The (H, W, 3) uint8 RGB image in encoded bytes, read as `predict` reads files (EXIF
    orientation applied; truncated files, non-images and decompression bombs are SegpipeErrors)."""
    return read_image(bytes(data), name)


def predict_labels(predictor: Predictor, image: np.ndarray, tiling: Tiling | None = None, *, tta: bool = False) -> np.ndarray:
    """The class map (H, W) uint8 of one image: letterboxed whole, or in `tiling`'s windows."""
    if tiling is None:
        return class_map(predictor.predict_probs(image, tta=tta))
    labels, _ = predict_tiled(functools.partial(predictor.predict_batch, tta=tta), image, tiling)
    return labels


def mask_png(labels: np.ndarray, num_classes: int) -> bytes:
    """The PNG bytes `predict` writes for these labels: 0/255 for two classes, class ids otherwise."""
    buffer = io.BytesIO()
    output_mask(labels, num_classes).save(buffer, format="PNG")
    return buffer.getvalue()


def checkpoint_tiling(params: Mapping[str, Any]) -> Tiling | None:
    """The windows a checkpoint was trained for, from its params: patch-trained models
    (`train.sampling: patches`) are predicted in windows of one patch at native scale; models
    trained on whole letterboxed images have none (they are predicted whole)."""
    train = params.get("train", {})
    if train.get("sampling") != "patches" or "patch_size" not in train:
        return None
    scale = float(train.get("patch_scale", 1.0))
    return Tiling(max(1, round(int(train["patch_size"]) / scale)), DEFAULT_OVERLAP, batch_size=TILE_BATCH)


def window_tiling(params: Mapping[str, Any], image_size: int) -> Tiling:
    """The windows to use when tiling is asked for: the checkpoint's own, else the model's input size."""
    return checkpoint_tiling(params) or Tiling(image_size, DEFAULT_OVERLAP, batch_size=TILE_BATCH)
