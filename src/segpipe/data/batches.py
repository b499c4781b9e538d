"""Batches on the device: uint8 in, normalised (and augmented) float out, in the memory format
the model runs fastest in.

    DataLoader: images (B, S, S, 3) uint8, masks (B, S, S) uint8, indices (B,)
      --to(device, non_blocking)--> permute to (B, 3, S, S)  (channels-last strides, no copy)
      --OnlineAugment (float 0-255)--> normalize --> memory format --> model
    masks --> int64 (255 stays: ignored by the loss)

Online augmentation runs on the whole batch where it lives. Its random numbers come from a CPU
generator seeded by (seed, epoch), one row per dataset index: a sample's draw depends on
(seed, epoch, index) only, not on its batch, its rank or the device, so a resumed run sees the
same draws as an uninterrupted one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from segpipe.data.letterbox import normalize


@dataclass(frozen=True)
class RandomFlip:
    """Flip image and mask together with probability p; dim -1 flips left-right, -2 up-down."""

    dim: int
    p: float = 0.5
    draws = 1

    def __call__(self, images: torch.Tensor, masks: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images (B, 3, H, W), masks (B, H, W), u (B, 1) uniform in [0, 1) on the CPU; only the
        chosen samples are copied, flipped, into new tensors."""
        rows = (u[:, 0] < self.p).nonzero().flatten().tolist()
        if not rows:
            return images, masks
        images, masks = images.clone(), masks.clone()
        images[rows] = images[rows].flip(self.dim)
        masks[rows] = masks[rows].flip(self.dim)
        return images, masks


@dataclass(frozen=True)
class RandomBrightnessContrast:
    """With probability p: image * alpha + beta, alpha from 1 +- contrast_limit, beta from
    +-brightness_limit of the full 255 range, clipped to 0-255. Masks are left alone."""

    brightness_limit: float = 0.1
    contrast_limit: float = 0.1
    p: float = 0.5
    draws = 3

    def __call__(self, images: torch.Tensor, masks: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images (B, 3, H, W) float on the 0-255 scale, u (B, 3) uniform in [0, 1) on the CPU."""
        on = u[:, 0] < self.p
        if not on.any():
            return images, masks
        alpha = torch.where(on, 1 + self.contrast_limit * (2 * u[:, 1] - 1), 1.0)
        beta = torch.where(on, 255 * self.brightness_limit * (2 * u[:, 2] - 1), 0.0)
        alpha, beta = (v.to(images.device, non_blocking=True).view(-1, 1, 1, 1) for v in (alpha, beta))
        return torch.addcmul(beta, images, alpha).clamp_(0, 255), masks


def default_online_transforms() -> list[RandomFlip | RandomBrightnessContrast]:
    """`train.online_augment`: flips both ways and a light brightness/contrast change, each half the time."""
    return [RandomFlip(-1), RandomFlip(-2), RandomBrightnessContrast(0.1, 0.1, p=0.5)]


class OnlineAugment:
    """Transforms applied to every batch, drawn anew each epoch by (seed, epoch, dataset index).

    Args:
        transforms: callables (images, masks, u) -> (images, masks), each with a `draws` count of
            uniform numbers it takes per sample.
        seed: the run's seed.
        count: the dataset's length (one row of draws per index).
    """

    def __init__(self, transforms: Sequence, seed: int, count: int) -> None:
        self.transforms = list(transforms)
        self.seed, self.count = seed, count
        self._epoch: int | None = None
        self._table = torch.empty(0)

    def draws(self, epoch: int) -> torch.Tensor:
        """The epoch's (count, total draws) uniform numbers on the CPU; row i belongs to index i."""
        if epoch != self._epoch:
            digest = hashlib.sha256(f"online-augment:{self.seed}:{epoch}".encode()).digest()
            generator = torch.Generator().manual_seed(int.from_bytes(digest[:8], "big") >> 1)
            width = sum(t.draws for t in self.transforms)
            self._table, self._epoch = torch.rand((self.count, width), generator=generator), epoch
        return self._table

    def __call__(
        self, images: torch.Tensor, masks: torch.Tensor, indices: torch.Tensor, epoch: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Augment images (B, 3, H, W) float 0-255 and masks (B, H, W) of dataset `indices` (B,)."""
        u = self.draws(epoch)[indices.cpu()]  # decisions are made on the CPU, pixels change on the device
        column = 0
        for transform in self.transforms:
            images, masks = transform(images, masks, u[:, column : column + transform.draws])
            column += transform.draws
        return images, masks


class DeviceBatches:
    """Turn a loader's uint8 batch into model input on `device`.

    Args:
        device: where the model runs.
        channels_last: give the model channels-last images (see `train.channels_last`).
        augment: online augmentation, or None.
    """

    def __init__(self, device: torch.device, *, channels_last: bool, augment: OnlineAugment | None = None) -> None:
        self.device = device
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.augment = augment

    def __call__(
        self, batch: Sequence[torch.Tensor], epoch: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(images (B, 3, S, S) float32 normalised, masks (B, S, S) int64) on the device; augmented
        when an epoch is given and augmentation is on."""
        images, masks, indices = batch
        # Pinned by the loader on CUDA, so these copies overlap with the GPU's work.
        images = images.to(self.device, non_blocking=True).permute(0, 3, 1, 2)  # (B, 3, S, S), NHWC strides
        masks = masks.to(self.device, non_blocking=True)
        if self.augment is not None and epoch is not None:
            images, masks = self.augment(images.float(), masks, indices, epoch)
        images = normalize(images).contiguous(memory_format=self.memory_format)
        return images, masks.long()
