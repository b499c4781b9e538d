"""Class colours: palette PNG masks, the mask form `predict` writes, and overlays for people.

Shared by predict, evaluate's figures and the web page, so a class has one colour everywhere.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

OVERLAY_ALPHA = 0.5
# Class colours for overlays: VOC colours, except that class 1 of the VOC map (dark red,
# 128, 0, 0) is hard to see on skin and tissue, so the foreground of 2-class models is bright red.
BINARY_COLOUR = (255, 0, 0)
# Error colours of evaluate's gallery: saturated, unlike the dark VOC class colours, and told
# apart without red and green (colour blindness).
ERROR_COLOURS = {
    "false positive": (255, 0, 255),  # magenta
    "false negative": (0, 200, 255),  # cyan
    "wrong class": (255, 220, 0),  # yellow
}
ERROR_ALPHA = 0.75


def voc_palette(n: int = 256) -> list[int]:
    """The Pascal VOC colour map: class 0 black, 1 dark red, 2 dark green, ...; 255 shows as white-ish."""
    palette = []
    for label in range(n):
        r = g = b = 0
        c = label
        for bit in range(8):
            r |= ((c >> 0) & 1) << (7 - bit)
            g |= ((c >> 1) & 1) << (7 - bit)
            b |= ((c >> 2) & 1) << (7 - bit)
            c >>= 3
        palette += [r, g, b]
    return palette


def mask_image(mask: np.ndarray) -> Image.Image:
    """A class-id mask as a palette PNG image: one byte per pixel, VOC colours in a viewer."""
    if mask.dtype != np.uint8 or mask.ndim != 2:
        raise ValueError(f"a mask must be a 2-D uint8 array, got {mask.dtype} {mask.shape}")
    image = Image.fromarray(mask, mode="L").convert("P")
    image.putpalette(voc_palette())
    return image


def output_mask(labels: np.ndarray, num_classes: int) -> Image.Image:
    """2 classes: an "L" image of 0 / 255; more: a palette image of class ids."""
    if num_classes == 2:
        return Image.fromarray(np.where(labels > 0, 255, 0).astype(np.uint8), mode="L")
    return mask_image(labels)


def mask_png(labels: np.ndarray, num_classes: int) -> bytes:
    """The PNG file of `output_mask(labels)`: what `predict` writes, the server and the MLflow
    Model return."""
    buffer = io.BytesIO()
    output_mask(labels, num_classes).save(buffer, format="PNG")
    return buffer.getvalue()


def class_colours(num_classes: int) -> np.ndarray:
    """(256, 3) uint8: the overlay colour of each class id (VOC colours; bright red for 2 classes)."""
    palette = np.array(voc_palette(), dtype=np.uint8).reshape(-1, 3)
    if num_classes == 2:
        palette[1] = BINARY_COLOUR
    return palette


def colour_overlay(image: np.ndarray, labels: np.ndarray, num_classes: int, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """(H, W, 3) uint8: the image with every non-background pixel blended towards its class colour."""
    colours = class_colours(num_classes).astype(np.float32)[labels]  # (H, W, 3)
    blended = image.astype(np.float32)
    foreground = labels > 0
    blended[foreground] = (1 - alpha) * blended[foreground] + alpha * colours[foreground]
    return blended.round().astype(np.uint8)


def error_overlay(
    image: np.ndarray, truth: np.ndarray, prediction: np.ndarray, ignore_index: int = 255, alpha: float = ERROR_ALPHA
) -> np.ndarray:
    """(H, W, 3) uint8: the image in gray with each wrongly predicted pixel in its `ERROR_COLOURS` colour.

    Class 0 is the background: a false positive is foreground predicted on background, a false
    negative background predicted on foreground, and a wrong class one foreground class predicted
    for another. Pixels whose truth is `ignore_index` (left out by the metrics) are not errors.
    """
    gray = image.astype(np.float32).mean(axis=2, keepdims=True).repeat(3, axis=2)
    labelled = truth != ignore_index
    wrong = labelled & (prediction != truth)
    regions = {
        "false positive": wrong & (truth == 0),
        "false negative": wrong & (prediction == 0),
        "wrong class": wrong & (truth != 0) & (prediction != 0),
    }
    for name, where in regions.items():
        gray[where] = (1 - alpha) * gray[where] + alpha * np.array(ERROR_COLOURS[name], np.float32)
    return gray.round().astype(np.uint8)
