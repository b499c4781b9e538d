"""Shared prediction: one image in, softmax probabilities at the image's own size out.

`evaluate` and `predict` both go through `Predictor`, so an image is letterboxed, normalised,
run and mapped back exactly the same way in both; the masks `predict` writes therefore score
exactly the numbers `evaluate` reports.

    image (H, W, 3) --Letterbox.fit/apply_image--> canvas (S, S) --to_tensor--> model --softmax-->
    (C, S, S) --Letterbox.restore--> (C, H, W)

S is the checkpoint's `image_size`. Large images (aerial mosaics, whole slides) use tiled
prediction instead: overlapping `tile` x `tile` windows, each fed to the model through the same
letterbox (so a window is resized to S x S when tile != S), their probabilities blended with a
smooth 2-D weight window that falls towards the window's edges, where a U-Net sees the least
context. Windows are processed one row at a time and only a band of `tile` rows of float32
accumulators is kept, so a 10,000 x 10,000 image needs about C x tile x W x 4 bytes of sums
besides the image and its uint8 label map.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from segpipe.errors import SegpipeError
from segpipe.letterbox import Letterbox, to_tensor
from segpipe.training.checkpoint import load_checkpoint, model_from_checkpoint

Window = Literal["gaussian", "spline"]
WINDOWS: tuple[str, ...] = ("gaussian", "spline")

# Above this, `predict_tiled` refuses to hold all C x H x W float32 probabilities in memory;
# callers stream bands (`tiled_bands`) or take labels (`predict_tiled_labels`) instead.
MAX_PROBS_BYTES = 2 * 1024**3

# Weights never fall below this fraction of the window's peak: pixels at the image border are
# covered by a single window, and a weight near 0 there would make sum / weight ill-conditioned.
MIN_WEIGHT = 1e-3


class Predictor:
    """A model rebuilt from a checkpoint file alone, ready to predict.

    Args:
        checkpoint_path: a segpipe checkpoint (best.pt); its model_args, classes and image_size
            say how to rebuild and feed the model.
        device: where the model runs.
    """

    def __init__(self, checkpoint_path: Path, device: torch.device = torch.device("cpu")) -> None:
        checkpoint = load_checkpoint(checkpoint_path, map_location="cpu")
        self._setup(model_from_checkpoint(checkpoint), checkpoint["classes"], checkpoint["image_size"], device)

    @classmethod
    def from_model(
        cls, model: nn.Module, classes: Sequence[str], image_size: int, device: torch.device = torch.device("cpu")
    ) -> Predictor:
        """A predictor around a model already in memory (benchmarks, tests)."""
        predictor = cls.__new__(cls)
        predictor._setup(model, classes, image_size, device)
        return predictor

    def _setup(self, model: nn.Module, classes: Sequence[str], image_size: int, device: torch.device) -> None:
        self.model = model.to(device).eval()
        self.classes = list(classes)
        self.image_size = int(image_size)
        self.device = device

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def predict_probs(self, image: np.ndarray, *, tta: bool = False) -> torch.Tensor:
        """Softmax probabilities (C, H, W) float32 on the CPU for one (H, W, 3) uint8 RGB image."""
        return self.predict_batch([image], tta=tta)[0]

    def predict_batch(self, images: Sequence[np.ndarray], *, tta: bool = False) -> list[torch.Tensor]:
        """`predict_probs` for several images in one forward pass; each keeps its own size."""
        if not images:
            return []
        boxes = [Letterbox.fit(image.shape[:2], (self.image_size, self.image_size)) for image in images]
        batch = torch.stack([to_tensor(box.apply_image(image)) for box, image in zip(boxes, images)])
        probs = self.canvas_probs(batch, tta=tta)  # (B, C, S, S)
        return [box.restore(p) for box, p in zip(boxes, probs)]

    @torch.no_grad()
    def canvas_probs(self, batch: torch.Tensor, *, tta: bool = False) -> torch.Tensor:
        """Softmax probabilities (B, C, S, S) on the CPU for a normalised (B, 3, S, S) batch.

        With `tta`, the mean over the 8 rotations and flips of the square canvas, each
        prediction turned back before averaging.
        """
        batch = batch.to(self.device)
        if not tta:
            return self._softmax(batch).cpu()
        total = torch.zeros((batch.shape[0], self.num_classes, *batch.shape[-2:]))
        for flip in (False, True):
            flipped = batch.flip(-1) if flip else batch
            for turns in range(4):
                probs = self._softmax(torch.rot90(flipped, turns, dims=(-2, -1)))
                probs = torch.rot90(probs, -turns, dims=(-2, -1))
                total += (probs.flip(-1) if flip else probs).cpu()
        return total / 8

    def _softmax(self, batch: torch.Tensor) -> torch.Tensor:
        logits = self.model(batch).float()  # (B, C, S, S)
        if logits.shape[1] != self.num_classes:
            raise SegpipeError(
                f"the model predicts {logits.shape[1]} classes but the checkpoint names "
                f"{self.num_classes}: {self.classes}; the checkpoint is inconsistent, re-train it"
            )
        return F.softmax(logits, dim=1)

    def predict_tiled(
        self,
        image: np.ndarray,
        tile: int,
        overlap: float = 0.25,
        window: Window = "gaussian",
        tta: bool = False,
        batch_size: int = 4,
    ) -> torch.Tensor:
        """Tiled softmax probabilities (C, H, W) float32, when they fit in `MAX_PROBS_BYTES`.

        See `tiled_bands` for the arguments; use `predict_tiled_labels` for very large images.
        """
        height, width = image.shape[:2]
        needed = self.num_classes * height * width * 4
        if needed > MAX_PROBS_BYTES:
            raise SegpipeError(
                f"probabilities of a {height}x{width} image need {needed / 1024**3:.1f} GiB; "
                f"take the class map with predict_tiled_labels (predict without --probs) instead"
            )
        probs = torch.empty((self.num_classes, height, width))
        for top, band in self.tiled_bands(image, tile, overlap, window=window, tta=tta, batch_size=batch_size):
            probs[:, top : top + band.shape[1]] = band
        return probs

    def predict_tiled_labels(
        self,
        image: np.ndarray,
        tile: int,
        overlap: float = 0.25,
        window: Window = "gaussian",
        tta: bool = False,
        batch_size: int = 4,
    ) -> np.ndarray:
        """Tiled class map (H, W) uint8, built band by band (the probabilities never exist whole)."""
        labels = np.empty(image.shape[:2], dtype=np.uint8)
        for top, band in self.tiled_bands(image, tile, overlap, window=window, tta=tta, batch_size=batch_size):
            labels[top : top + band.shape[1]] = class_map(band)
        return labels

    def tiled_bands(
        self,
        image: np.ndarray,
        tile: int,
        overlap: float = 0.25,
        *,
        window: Window = "gaussian",
        tta: bool = False,
        batch_size: int = 4,
    ) -> Iterator[tuple[int, torch.Tensor]]:
        """Blend overlapping windows and yield finished rows, top to bottom.

        Args:
            image: (H, W, 3) uint8 RGB, any size.
            tile: window side in source pixels. Each window is letterboxed to the checkpoint's
                image_size like a whole image is, so a tile larger than image_size is shrunk
                (coarser, more context) and a smaller one enlarged. Sides shorter than `tile`
                give windows of the image's extent there.
            overlap: fraction of a window shared with its neighbour, in [0, 1); the stride is
                tile * (1 - overlap). The last window of a row or column is aligned to the image edge.
            window: the blending weights, "gaussian" or "spline".
            tta: average each window over the 8 rotations and flips.
            batch_size: windows per forward pass.
        Yields:
            (top, probs): probs (C, rows, W) float32 for image rows top : top + rows; together the
            bands cover every row once.
        """
        if image.ndim != 3 or image.shape[2] != 3:
            raise SegpipeError(f"tiled prediction expects an (H, W, 3) RGB image, got shape {image.shape}")
        if tile < 1 or not 0 <= overlap < 1:
            raise SegpipeError(f"tile must be >= 1 and overlap in [0, 1), got tile {tile}, overlap {overlap}")
        if window not in WINDOWS:
            raise SegpipeError(f"unknown blending window {window!r}; choose one of {', '.join(WINDOWS)}")
        height, width = image.shape[:2]
        win_h, win_w = min(tile, height), min(tile, width)
        stride = max(1, round(tile * (1 - overlap)))
        rows, cols = window_starts(height, win_h, stride), window_starts(width, win_w, stride)
        weight = weight_window(win_h, win_w, window)  # (win_h, win_w)
        sums = torch.zeros((self.num_classes, win_h, width))  # rows top : top + win_h
        weights = torch.zeros((win_h, width))
        for index, top in enumerate(rows):
            windows = [image[top : top + win_h, left : left + win_w] for left in cols]
            for left, probs in zip(cols, self._window_probs(windows, tta, batch_size)):
                sums[:, :, left : left + win_w] += probs * weight
                weights[:, left : left + win_w] += weight
            # Rows above the next window row get no more windows: they are finished.
            done = (rows[index + 1] if index + 1 < len(rows) else top + win_h) - top
            yield top, sums[:, :done] / weights[:done]
            sums = torch.cat([sums[:, done:], torch.zeros((self.num_classes, done, width))], dim=1)
            weights = torch.cat([weights[done:], torch.zeros((done, width))], dim=0)

    def _window_probs(self, windows: list[np.ndarray], tta: bool, batch_size: int) -> Iterator[torch.Tensor]:
        """Probabilities (C, win_h, win_w) of each window, `batch_size` windows per forward pass."""
        for start in range(0, len(windows), batch_size):
            chunk = [np.ascontiguousarray(w) for w in windows[start : start + batch_size]]
            yield from self.predict_batch(chunk, tta=tta)


def class_map(probs: torch.Tensor) -> np.ndarray:
    """The most probable class per pixel of (C, H, W) probabilities, as (H, W) uint8."""
    return probs.argmax(0).to(torch.uint8).numpy()


def window_starts(length: int, window: int, stride: int) -> list[int]:
    """Start offsets of windows covering [0, length): every `stride`, the last one flush with the end."""
    if length <= window:
        return [0]
    starts = list(range(0, length - window, stride))
    return starts + [length - window]


def weight_window(height: int, width: int, kind: Window = "gaussian") -> torch.Tensor:
    """A smooth (height, width) float32 blending weight, 1 at the centre, small at the edges.

    gaussian: exp(-d^2 / 2 sigma^2) per axis with sigma = side / 8 (nnU-Net's choice).
    spline: per axis, with t rising linearly from the edge (0) to the centre (1), 2 t^2 below
    t = 1/2 and 1 - 2 (1 - t)^2 above: a C1 quadratic ramp, as in the smooth tiling of Dubai
    aerial imagery. Both are floored at MIN_WEIGHT.
    """
    profile = _gaussian_profile if kind == "gaussian" else _spline_profile
    weight = torch.outer(profile(height), profile(width))
    return weight.clamp_min(MIN_WEIGHT).float()


def _centre_distance(n: int) -> torch.Tensor:
    """|position - centre| / (n / 2) of each pixel centre: 0 at the middle, towards 1 at the edges."""
    centres = torch.arange(n, dtype=torch.float64) + 0.5
    return (centres - n / 2).abs() / (n / 2)


def _gaussian_profile(n: int) -> torch.Tensor:
    # distance in pixels / sigma, with sigma = n / 8 and distance = d * n / 2: ratio = 4 d
    return torch.exp(-0.5 * (4 * _centre_distance(n)) ** 2)


def _spline_profile(n: int) -> torch.Tensor:
    t = 1 - _centre_distance(n)
    return torch.where(t < 0.5, 2 * t**2, 1 - 2 * (1 - t) ** 2)
