"""The one letterbox: fit an image into a fixed canvas without distorting it, and undo that.

Training, evaluation and prediction all go through `Letterbox`, so an image is resized and
padded the same way everywhere, and a prediction made on the canvas maps back onto the
source pixels exactly the way the labels were mapped onto the canvas.

    src (src_h, src_w) --scale--> (new_h, new_w) --pad--> canvas (size_h, size_w)

The image is scaled by ``min(size_h / src_h, size_w / src_w)`` and centred; image padding is
the ImageNet mean colour (zero after `to_tensor`), mask padding is `IGNORE_INDEX`, so padded
pixels never count as background in the loss or the metrics.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from segpipe.errors import SegpipeError
from segpipe.imageio import IGNORE_INDEX


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

MEAN_PAD_VALUE = tuple(round(255 * m) for m in IMAGENET_MEAN)
"""RGB uint8 padding colour: the ImageNet mean, so padding normalises to about 0."""


@dataclass(frozen=True)
class Letterbox:
    """How an image of (src_h, src_w) was placed into a (size_h, size_w) canvas.

    The resized image occupies rows ``top : top + new_h`` and columns ``left : left + new_w``
    of the canvas; the rest is padding.
    """

    src_h: int
    src_w: int
    scale: float
    new_h: int
    new_w: int
    top: int
    left: int
    size_h: int
    size_w: int

    @classmethod
    def fit(cls, src_hw: tuple[int, int], size_hw: tuple[int, int], max_scale: float | None = None) -> Letterbox:
        """Place a (src_h, src_w) image, scaled to fit and centred, into a (size_h, size_w) canvas.

        Args:
            max_scale: never enlarge beyond this factor (a patch model's training scale), so a
                window smaller than the canvas is padded rather than blown up.
        """
        src_h, src_w = (int(v) for v in src_hw)
        size_h, size_w = (int(v) for v in size_hw)
        if min(src_h, src_w) < 1:
            raise SegpipeError(f"cannot letterbox an empty image of size {src_h}x{src_w}")
        if min(size_h, size_w) < 1:
            raise SegpipeError(
                f"letterbox size must be positive, got {size_h}x{size_w}; check the image size in params.yaml"
            )
        scale = min(size_h / src_h, size_w / src_w)
        if max_scale is not None:
            scale = min(scale, max_scale)
        # The limiting side gets exactly the canvas size; the other is rounded, at least 1 pixel.
        new_h = min(size_h, max(1, round(src_h * scale)))
        new_w = min(size_w, max(1, round(src_w * scale)))
        return cls(
            src_h=src_h,
            src_w=src_w,
            scale=scale,
            new_h=new_h,
            new_w=new_w,
            top=(size_h - new_h) // 2,
            left=(size_w - new_w) // 2,
            size_h=size_h,
            size_w=size_w,
        )

    def is_identity(self) -> bool:
        """True when the canvas is the source size: nothing is resized or padded."""
        return (self.src_h, self.src_w) == (self.size_h, self.size_w)

    def apply_image(self, image: np.ndarray, pad_value: tuple[int, ...] = MEAN_PAD_VALUE) -> np.ndarray:
        """Resize (bilinear; area when shrinking) and pad an (src_h, src_w[, C]) image to the canvas.

        Args:
            image: uint8 array (src_h, src_w, C) or (src_h, src_w).
            pad_value: colour of the padding, one value per channel.
        Returns:
            An array (size_h, size_w[, C]) of the image's dtype.
        """
        self._check_source(image, "image")
        return self._pad(resize_image(image, (self.new_h, self.new_w)), pad_value)

    def apply_reduced(self, image: np.ndarray, pad_value: tuple[int, ...] = MEAN_PAD_VALUE) -> np.ndarray:
        """`apply_image` for the source decoded at reduced scale (`imageio.read_image_for`).

        Args:
            image: the source's pixels at (src_h, src_w), or reduced to any size from
                (new_h, new_w) up to that.
        """
        h, w = image.shape[:2]
        reduced = self.new_h <= h <= self.src_h and self.new_w <= w <= self.src_w
        if (h, w) != (self.src_h, self.src_w) and not reduced:
            raise SegpipeError(
                f"a reduced decode of {h}x{w} cannot stand for a {self.src_h}x{self.src_w} source "
                f"letterboxed to {self.new_h}x{self.new_w}; decode it with read_image_for(fit=...)"
            )
        return self._pad(resize_image(image, (self.new_h, self.new_w)), pad_value)

    def apply_mask(self, mask: np.ndarray) -> np.ndarray:
        """Resize (nearest, so no new labels appear) and pad an (src_h, src_w) mask with IGNORE_INDEX."""
        if mask.ndim != 2:
            raise SegpipeError(f"a mask must be 2-D (H, W) class indices, got shape {mask.shape}")
        self._check_source(mask, "mask")
        return self._pad(resize_mask(mask, (self.new_h, self.new_w)), IGNORE_INDEX)

    def crop(self, array: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """Remove the padding from a (..., size_h, size_w) array or tensor -> (..., new_h, new_w)."""
        if tuple(array.shape[-2:]) != (self.size_h, self.size_w):
            raise SegpipeError(
                f"expected an array ending in the letterbox size ({self.size_h}, {self.size_w}), "
                f"got shape {tuple(array.shape)}"
            )
        return array[..., self.top : self.top + self.new_h, self.left : self.left + self.new_w]

    def restore(self, probs: torch.Tensor) -> torch.Tensor:
        """Map canvas probabilities or logits back onto the source image.

        Args:
            probs: float tensor (C, size_h, size_w) or (B, C, size_h, size_w).
        Returns:
            The padding cropped off and the rest bilinearly resized: (C, src_h, src_w) or
            (B, C, src_h, src_w). Take the argmax after restoring, not before.
        """
        if probs.ndim not in (3, 4) or not probs.is_floating_point():
            raise SegpipeError(
                f"restore expects float probabilities or logits (C, H, W) or (B, C, H, W), "
                f"got {probs.dtype} of shape {tuple(probs.shape)}"
            )
        cropped = self.crop(probs)
        if (self.new_h, self.new_w) == (self.src_h, self.src_w):
            return cropped.clone()
        batched = cropped if probs.ndim == 4 else cropped.unsqueeze(0)
        restored = F.interpolate(batched, size=(self.src_h, self.src_w), mode="bilinear", align_corners=False)
        return restored if probs.ndim == 4 else restored.squeeze(0)

    def _check_source(self, array: np.ndarray, what: str) -> None:
        if array.shape[:2] != (self.src_h, self.src_w):
            raise SegpipeError(
                f"{what} of size {array.shape[0]}x{array.shape[1]} does not match the letterbox "
                f"source size {self.src_h}x{self.src_w}; fit a Letterbox to this {what}"
            )

    def _pad(self, array: np.ndarray, pad_value: int | tuple[int, ...]) -> np.ndarray:
        canvas = np.empty((self.size_h, self.size_w, *array.shape[2:]), dtype=array.dtype)
        canvas[...] = pad_value
        canvas[self.top : self.top + self.new_h, self.left : self.left + self.new_w] = array
        return canvas


def letterbox_pair(
    image: np.ndarray, mask: np.ndarray, size_hw: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, Letterbox]:
    """Letterbox an image and its mask together into a (size_h, size_w) canvas.

    Returns:
        (image, mask, letterbox): the canvas image, the canvas mask (padding = IGNORE_INDEX) and
        the `Letterbox` that maps predictions back to the source size.
    """
    if image.shape[:2] != mask.shape[:2]:
        raise SegpipeError(
            f"image of size {image.shape[0]}x{image.shape[1]} and mask of size "
            f"{mask.shape[0]}x{mask.shape[1]} differ; they must come from the same annotation"
        )
    box = Letterbox.fit(image.shape[:2], size_hw)
    return box.apply_image(image), box.apply_mask(mask), box


def resize_image(image: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Resize an (h, w[, C]) image to size_hw: area averaging when shrinking, else bilinear."""
    h, w = image.shape[:2]
    if (h, w) == tuple(size_hw):
        return image
    shrinking = size_hw[0] < h or size_hw[1] < w
    return _resize(image, size_hw, cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def resize_mask(mask: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Resize an (h, w) class mask to size_hw by nearest neighbour, so no new labels appear."""
    if mask.shape[:2] == tuple(size_hw):
        return mask
    # INTER_NEAREST_EXACT samples pixel centres; plain INTER_NEAREST is shifted by half a pixel.
    return _resize(mask, size_hw, cv2.INTER_NEAREST_EXACT)


def _resize(array: np.ndarray, size_hw: tuple[int, int], interpolation: int) -> np.ndarray:
    resized = cv2.resize(array, (size_hw[1], size_hw[0]), interpolation=interpolation)
    # cv2 drops a trailing channel axis of length 1; keep the caller's layout.
    return resized.reshape((*size_hw, *array.shape[2:]))


def normalize(images: torch.Tensor) -> torch.Tensor:
    """Normalise RGB images (B, 3, H, W) on the 0-255 scale (uint8, or float after augmentation)
    by ImageNet mean/std into a new float32 tensor on their device.

    The memory format is kept: a channels-last batch gives a channels-last result.
    """
    if images.ndim != 4 or images.shape[1] != 3 or images.dtype not in (torch.uint8, torch.float32):
        raise SegpipeError(
            f"normalize expects uint8 or float32 RGB images (B, 3, H, W) on the 0-255 scale, "
            f"got {images.dtype} of shape {tuple(images.shape)}"
        )
    # (x / 255 - mean) / std as one fused multiply-add: x * (1 / (255 std)) + (-mean / std)
    scale = torch.tensor([1 / (255 * s) for s in IMAGENET_STD], device=images.device).view(1, 3, 1, 1)
    offset = torch.tensor([-m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)], device=images.device).view(1, 3, 1, 1)
    return torch.addcmul(offset, images.float(), scale)


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """Turn an (H, W, 3) uint8 RGB image into a (3, H, W) float32 tensor normalised by ImageNet mean/std."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise SegpipeError(
            f"to_tensor expects an (H, W, 3) uint8 RGB image, got {image.dtype} of shape {image.shape}"
        )
    return normalize(torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None])[0].contiguous()


# Softmax probabilities (B, C, S, S) on the CPU for a normalised (B, 3, S, S) batch.
CanvasForward = Callable[[torch.Tensor], torch.Tensor]


def predict_letterboxed(
    forward: CanvasForward,
    images: Sequence[np.ndarray],
    size: int,
    max_scale: float | None = None,
    full_sizes: Sequence[tuple[int, int]] | None = None,
) -> list[torch.Tensor]:
    """Probabilities (C, H, W) of each (H, W, 3) uint8 image at its own size: letterbox into a
    (size, size) canvas (enlarging at most by `max_scale`), run `forward`, restore.

    The one way a model is fed whole images or tiles, shared by prediction and by training's
    tiled validation, so the two cannot drift apart.

    Args:
        full_sizes: for images decoded at reduced scale (`imageio.read_image_for`), the (H, W)
            of each full image; the probabilities come back at that size.
    """
    if not images:
        return []
    sizes = full_sizes or [image.shape[:2] for image in images]
    boxes = [Letterbox.fit(hw, (size, size), max_scale) for hw in sizes]
    batch = torch.stack([to_tensor(box.apply_reduced(image)) for box, image in zip(boxes, images)])
    probs = forward(batch)  # (B, C, S, S)
    return [box.restore(p) for box, p in zip(boxes, probs)]
