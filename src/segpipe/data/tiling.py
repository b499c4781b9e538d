"""Smoothly blended tiled prediction of large images (aerial mosaics, whole slides).

Overlapping `tile` x `tile` windows are each predicted by a function given by the caller
(`Predictor.predict_batch` in evaluate and predict, the model in training's validation of a patch
model; both letterbox a window like a whole image through `letterbox.predict_letterboxed`, so a
window is resized to the model's size when tile != image_size); their probabilities are blended
with a smooth 2-D weight that falls towards the window's edges, where a U-Net sees the least
context. It lives in the data phase, beside the letterbox and the training patches, because
training (validation), inference and evaluation all cut images this way.
Windows are processed one row at a time and only a band of `tile` rows of float32 sums is kept,
so a 10,000 x 10,000 image needs about C x tile x W x 4 bytes besides the image and its uint8
label map. `predict_tiled` is the entry point.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from segpipe.errors import SegpipeError

# Probabilities (C, h, w) float32 for each (h, w, 3) uint8 window, in order.
PredictWindows = Callable[[Sequence[np.ndarray]], Sequence[torch.Tensor]]

Window = Literal["gaussian", "spline"]
WINDOWS: tuple[str, ...] = ("gaussian", "spline")

# Above this, `predict_tiled` refuses to hold all C x H x W float32 probabilities in memory; the
# class map is built band by band instead.
MAX_PROBS_BYTES = 2 * 1024**3

# Weights never fall below this fraction of the window's peak: pixels at the image border are
# covered by a single window, and a weight near 0 there would make sum / weight ill-conditioned.
MIN_WEIGHT = 1e-3

# The one overlap of neighbouring windows wherever none is asked for (predict --overlap, the
# server, the MLflow Model, validation): different overlaps blend differently, and their masks
# must be the same bytes.
DEFAULT_OVERLAP = 0.25


@dataclass(frozen=True)
class Tiling:
    """How to cut an image into windows.

    Args:
        tile: window side in source pixels; sides shorter than `tile` give windows of the
            image's extent there.
        overlap: fraction of a window shared with its neighbour, in [0, 1); the stride is
            tile * (1 - overlap). The last window of a row or column is aligned to the image edge.
        window: the blending weights, "gaussian" or "spline".
        batch_size: windows per call of the predict function.
    """

    tile: int
    overlap: float = DEFAULT_OVERLAP
    window: Window = "gaussian"
    batch_size: int = 4

    def __post_init__(self) -> None:
        if self.tile < 1 or not 0 <= self.overlap < 1 or self.batch_size < 1:
            raise SegpipeError(
                f"tile must be >= 1, overlap in [0, 1) and batch size >= 1; "
                f"got tile {self.tile}, overlap {self.overlap}, batch size {self.batch_size}"
            )
        if self.window not in WINDOWS:
            raise SegpipeError(f"unknown blending window {self.window!r}; choose one of {', '.join(WINDOWS)}")


def predict_tiled(
    predict: PredictWindows, image: np.ndarray, tiling: Tiling, *, keep_probs: bool = False
) -> tuple[np.ndarray, torch.Tensor | None]:
    """The class map (H, W) uint8 of a tiled prediction, and the blended probabilities
    (C, H, W) float32 when `keep_probs` (refused above `MAX_PROBS_BYTES`)."""
    height, width = image.shape[:2]
    labels = np.empty((height, width), dtype=np.uint8)
    probs = None
    for top, band in tiled_bands(predict, image, tiling):
        if keep_probs and probs is None:
            needed = band.shape[0] * height * width * 4
            if needed > MAX_PROBS_BYTES:
                raise SegpipeError(
                    f"probabilities of a {height}x{width} image need {needed / 1024**3:.1f} GiB; "
                    "take the class map alone (predict without --probs) instead"
                )
            probs = torch.empty((band.shape[0], height, width))
        if probs is not None:
            probs[:, top : top + band.shape[1]] = band
        labels[top : top + band.shape[1]] = band.argmax(0).to(torch.uint8).numpy()
    return labels, probs


def tiled_bands(predict: PredictWindows, image: np.ndarray, tiling: Tiling) -> Iterator[tuple[int, torch.Tensor]]:
    """Blend overlapping windows and yield finished rows, top to bottom.

    Yields:
        (top, probs): probs (C, rows, W) float32 for image rows top : top + rows; together the
        bands cover every row once.
    """
    if image.ndim != 3 or image.shape[2] != 3:
        raise SegpipeError(f"tiled prediction expects an (H, W, 3) RGB image, got shape {image.shape}")
    height, width = image.shape[:2]
    win_h, win_w = min(tiling.tile, height), min(tiling.tile, width)
    stride = max(1, round(tiling.tile * (1 - tiling.overlap)))
    rows, cols = window_starts(height, win_h, stride), window_starts(width, win_w, stride)
    weight = weight_window(win_h, win_w, tiling.window)  # (win_h, win_w)
    sums = weights = None  # (C, win_h, W) and (win_h, W): rows top : top + win_h
    for index, top in enumerate(rows):
        windows = [np.ascontiguousarray(image[top : top + win_h, left : left + win_w]) for left in cols]
        for left, probs in zip(cols, _in_batches(predict, windows, tiling.batch_size)):
            if sums is None:
                sums, weights = torch.zeros((probs.shape[0], win_h, width)), torch.zeros((win_h, width))
            sums[:, :, left : left + win_w] += probs * weight
            weights[:, left : left + win_w] += weight
        # Rows above the next window row get no more windows: they are finished.
        done = (rows[index + 1] if index + 1 < len(rows) else top + win_h) - top
        yield top, sums[:, :done] / weights[:done]
        sums = torch.cat([sums[:, done:], torch.zeros((sums.shape[0], done, width))], dim=1)
        weights = torch.cat([weights[done:], torch.zeros((done, width))], dim=0)


def _in_batches(predict: PredictWindows, windows: list[np.ndarray], batch_size: int) -> Iterator[torch.Tensor]:
    for start in range(0, len(windows), batch_size):
        yield from predict(windows[start : start + batch_size])



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
