"""The model behind the web page: encoded image in, the mask `predict` writes (and what the page shows) out.

A `ModelService` holds one model and predicts one request at a time: a CPU has no spare cores
for two, and one decoded image in flight at a time bounds the memory a burst of uploads can take.
"""

from __future__ import annotations

import io
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image

from segpipe.errors import SegpipeError
from segpipe.imageio import read_image
from segpipe.inference.predictor import Predictor
from segpipe.data.tiling import Tiling
from segpipe.palette import class_colours, mask_png

TileMode = Literal["auto", "on", "off"]
TILE_MODES: tuple[str, ...] = ("auto", "on", "off")
URI_SCHEMES = ("models:/", "runs:/")


@dataclass(frozen=True)
class Prediction:
    """One answered request: the mask file `predict` writes, and what the page shows beside it."""

    mask_png: bytes
    labels: np.ndarray  # (H, W) uint8 class ids
    pixels: list[int]  # pixels of each class, in class-id order
    seconds: float  # decoding, prediction and encoding, without waiting for the model
    tiled: bool


class ModelService:
    """A model ready to answer requests.

    Args:
        checkpoint: a segpipe checkpoint file.
        device: where the model runs.
        source: how to name the model to people (a path or an MLflow URI).
    """

    def __init__(self, checkpoint: Path, device: torch.device = torch.device("cpu"), source: str | None = None) -> None:
        self.predictor = Predictor.from_checkpoint(checkpoint, device)
        # "auto" is what `predict` does by default (the model's own windows for a patch model,
        # whole images for a letterbox model); "on" uses the model's windows, or for a letterbox
        # model windows of its input size.
        self.auto_tiling: Tiling | None = self.predictor.tiling
        self.tiling: Tiling = self.auto_tiling or self.predictor.windows(self.predictor.image_size)
        self.source = source or str(checkpoint)
        self._lock = threading.Lock()

    @property
    def classes(self) -> list[str]:
        return self.predictor.classes

    def describe(self) -> dict:
        """What a client needs to know: classes with their overlay colours, input size, tiling."""
        colours = class_colours(len(self.classes))
        return {
            "model": self.source,
            "classes": [{"name": name, "colour": "#%02x%02x%02x" % tuple(colours[i])} for i, name in enumerate(self.classes)],
            "image_size": self.predictor.image_size,
            "tile": self.tiling.tile,
            "overlap": self.tiling.overlap,
            # What "auto" means, decided here once, never by the page: True = in windows.
            "tiles_by_default": self.auto_tiling is not None,
        }

    def predict(self, data: bytes, name: str, tile: TileMode = "auto", tta: bool = False) -> Prediction:
        """Predict the image in `data` (`name` only labels error messages).

        tile: "on" predicts in the model's windows (as `predict --tile`), "off" whole and
        letterboxed, "auto" as `predict` does by default (`Predictor.tiling`): in windows for
        patch-trained models, whole otherwise; the masks are the bytes `predict` writes.
        Raises SegpipeError for data that is not a readable image, or a bad `tile`.
        """
        if tile not in TILE_MODES:
            raise SegpipeError(f"tile must be one of {', '.join(TILE_MODES)}, got {tile!r}")
        with self._lock:
            started = time.perf_counter()
            image = read_image(bytes(data), name)
            tiling = {"auto": self.auto_tiling, "on": self.tiling, "off": None}[tile]
            labels, _ = self.predictor.predict_image(image, tiling, tta=tta)
            tiled = tiling is not None
            png = mask_png(labels, len(self.classes))
            pixels = np.bincount(labels.ravel(), minlength=len(self.classes)).tolist()
            return Prediction(png, labels, pixels, time.perf_counter() - started, tiled)

    def colour_layer_png(self, labels: np.ndarray) -> bytes:
        """An RGBA PNG of the labels: each class in its overlay colour, the background transparent."""
        rgba = np.zeros((*labels.shape, 4), np.uint8)
        rgba[..., :3] = class_colours(len(self.classes))[labels]
        rgba[..., 3] = np.where(labels > 0, 255, 0)
        buffer = io.BytesIO()
        Image.fromarray(rgba, mode="RGBA").save(buffer, format="PNG", compress_level=1)
        return buffer.getvalue()


def load_service(model: str, device: torch.device = torch.device("cpu")) -> ModelService:
    """The service for MODEL: a checkpoint path, or an MLflow model URI (models:/name@alias,
    runs:/<id>/model) whose checkpoint is downloaded and loaded."""
    if model.startswith(URI_SCHEMES):
        from segpipe.experiments.registry import checkpoint_from_uri

        with tempfile.TemporaryDirectory(prefix="segpipe-serve-") as folder:
            return ModelService(checkpoint_from_uri(model, Path(folder)), device, source=model)
    path = Path(model)
    if not path.is_file():
        raise SegpipeError(
            f"{model}: no such checkpoint; give a checkpoint file (models/best.pt after `dvc repro`) "
            f"or an MLflow model URI ({' or '.join(s + '...' for s in URI_SCHEMES)})"
        )
    return ModelService(path, device)
