"""Clean-up of a predicted class map for tasks with one solid object per image (a skin lesion).

Two options, each off by default and each measured on real data before it is recommended (README,
"Reproducing published results"):

- `largest_component`: of every foreground class keep only its largest 8-connected region; the
  other regions of that class become background (class 0). For one lesion per photo, specks of
  hair, ruler marks or vignetting classified as lesion go. Wrong for scenes with many objects of a
  class (buildings on an aerial tile).
- `fill_holes`: a hole, a 4-connected region of background that does not touch the image border,
  becomes the class around it when every pixel next to it is of that one class. Only background
  changes; a hole bordered by two classes (an island of another class inside it, or a region
  where two classes meet) is left alone. Background reaches the border only
  through side-by-side pixels, so an outline closed only diagonally still encloses its hole (the
  convention of scipy.ndimage.binary_fill_holes, and the dual of 8-connected regions).

Both run on the full-size class map, after letterboxing or tiling is undone: what is cleaned is
exactly the mask that is written or scored.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class PostProcess:
    """Which clean-ups to apply to a class map; `PostProcess()` applies none."""

    largest_component: bool = False
    fill_holes: bool = False

    def __call__(self, labels: np.ndarray) -> np.ndarray:
        """A cleaned copy of the (H, W) class map (the input itself when nothing is asked)."""
        if self.largest_component:
            labels = keep_largest_component(labels)
        if self.fill_holes:
            labels = fill_holes(labels)
        return labels

    def describe(self) -> str:
        chosen = [name for name in ("largest_component", "fill_holes") if getattr(self, name)]
        return " + ".join(chosen) or "none"


def foreground_classes(labels: np.ndarray) -> list[int]:
    return [int(c) for c in np.unique(labels) if c != 0]


def keep_largest_component(labels: np.ndarray) -> np.ndarray:
    """`labels` with every foreground class reduced to its largest 8-connected region (ties: the
    region met first in row-major order); the rest of that class becomes background 0."""
    out = labels.copy()
    for cls in foreground_classes(labels):
        regions, count = ndimage.label(labels == cls, structure=EIGHT_CONNECTED)
        if count < 2:
            continue
        sizes = np.bincount(regions.ravel())
        sizes[0] = 0  # not a region: everything else
        out[(regions != 0) & (regions != int(np.argmax(sizes)))] = 0
    return out


def fill_holes(labels: np.ndarray) -> np.ndarray:
    """`labels` with each background hole enclosed by one foreground class given that class."""
    background = labels == 0
    holes, count = ndimage.label(background)  # 4-connected
    if count == 0:
        return labels.copy()
    open_to_border = np.unique(np.concatenate([holes[0], holes[-1], holes[:, 0], holes[:, -1]]))
    # touching[c, h]: hole h has a pixel side by side with class c (c = 0 unused).
    classes = foreground_classes(labels)
    touching = np.zeros((max(classes, default=0) + 1, count + 1), dtype=bool)
    for cls in classes:
        beside = ndimage.binary_dilation(labels == cls) & background
        touching[cls, np.unique(holes[beside])] = True
    enclosing = np.where(touching.sum(axis=0) == 1, touching.argmax(axis=0), 0)
    enclosing[0] = 0
    enclosing[open_to_border] = 0
    out = labels.copy()
    out[background] = enclosing[holes[background]].astype(labels.dtype)
    return out
