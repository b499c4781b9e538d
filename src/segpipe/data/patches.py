"""Training on patches: random square crops of each image at a chosen scale of its resolution.

With `train.sampling: patches`, every epoch cuts `patches_per_image` crops of `patch_size` from
each training image scaled by `patch_scale` (1.0 = native resolution), so a 2,000-pixel aerial
tile is learnt at its own scale instead of being shrunk to `image_size`. A crop is centred on a
pixel of a randomly chosen non-background class present in the image with probability
`patch_class_balance` (nnU-Net's foreground oversampling), else placed uniformly. A scaled image
smaller than a patch is padded, image with the letterbox colour and mask with `IGNORE_INDEX`, at
a random offset. Items are keyed by (epoch, index), and a crop's draws come from (seed, epoch,
index) alone, so a resumed run sees the same patches, whichever DataLoader worker cuts them (the
workers live for the whole run, so the epoch travels with the key, not as dataset state).

Like the letterboxed dataset, items stay uint8; online augmentation runs on the device
(`segpipe.data.batches`).

Patches are cut from whole images already decoded and scaled, never by decoding an image per
crop: the dataset takes a `ScaledLoader`, `load(sample, scale) -> (image, mask)`: the decoded
cache's `DecodedCache.scaled`, or, with the cache off, `MemoryScaledCache` (decode and scale once
per process, keep it in memory).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import Dataset

from segpipe.data.cache import Scaled
from segpipe.data.letterbox import MEAN_PAD_VALUE
from segpipe.imageio import IGNORE_INDEX
from segpipe.layout import Sample

if TYPE_CHECKING:  # data.spec builds PatchDataset, so it is imported for the annotation only
    from segpipe.data.spec import PatchInput

# (sample, scale) -> (image (H, W, 3) uint8, mask (H, W) uint8) of the whole image scaled by scale.
ScaledLoader = Callable[[Sample, float], tuple[np.ndarray, np.ndarray]]

# Pixels kept per class for centring crops: enough to spread crops over a class, few enough that
# the lists of a large image stay small (nnU-Net samples its class locations the same way).
MAX_CLASS_POINTS = 10_000


class MemoryScaledCache:
    """A `ScaledLoader` for `train.cache: false`: decodes and scales each sample once, exactly as
    the decoded cache would (`Scaled.build`), and keeps it in this process's memory for the run.
    DataLoader workers (train.workers > 0, alive for the whole run) each hold, and fill, their own."""

    def __init__(self) -> None:
        self._pairs: dict[tuple[str, str, float], tuple[np.ndarray, np.ndarray]] = {}

    def __call__(self, sample: Sample, scale: float) -> tuple[np.ndarray, np.ndarray]:
        key = (str(sample.image), str(sample.mask), scale)
        if key not in self._pairs:
            self._pairs[key] = Scaled(scale).build(sample)
        return self._pairs[key]


def class_points(mask: np.ndarray, max_points: int = MAX_CLASS_POINTS) -> dict[int, np.ndarray]:
    """Flat pixel indices of each non-background class present in `mask` (ignored pixels left
    out), at most `max_points` per class, evenly spaced so that the choice needs no randomness."""
    flat = mask.ravel()
    points = {}
    for value in np.unique(flat):
        if value in (0, IGNORE_INDEX):
            continue
        where = np.flatnonzero(flat == value)
        points[int(value)] = where[:: max(1, len(where) // max_points)][:max_points]
    return points


def crop_start(rng: np.random.Generator, length: int, patch: int, centre: int | None = None) -> int:
    """Where a `patch`-long crop of a `length`-long axis starts: uniform over the positions that
    keep the crop inside (or, when length < patch, the image inside the crop), or centred on
    `centre` and pushed back inside those bounds."""
    low, high = min(0, length - patch), max(0, length - patch)
    if centre is None:
        return int(rng.integers(low, high + 1))
    return int(np.clip(centre - patch // 2, low, high))


def cut(array: np.ndarray, top: int, left: int, patch: int, fill: int | tuple[int, ...]) -> np.ndarray:
    """The (patch, patch[, C]) window of `array` at (top, left); what lies outside is `fill`."""
    out = np.empty((patch, patch, *array.shape[2:]), dtype=array.dtype)
    out[...] = fill
    height, width = array.shape[:2]
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + patch, height), min(left + patch, width)
    if y1 > y0 and x1 > x0:
        out[y0 - top : y1 - top, x0 - left : x1 - left] = array[y0:y1, x0:x1]
    return out


class PatchDataset(Dataset):
    """`patches_per_image` random crops of every sample per epoch; item (epoch, i) is a crop of
    sample i // patches_per_image: image (P, P, 3) uint8 RGB, mask (P, P) uint8 class ids (255 =
    padding or ignored) and i, which `OnlineAugment` draws by. P = train.patch_size.

    Args:
        samples: the training images.
        spec: the `data.spec.PatchInput` input spec (size, scale, per_image, class_balance).
        seed: base.seed; with the epoch and the item index it fixes every draw.
        load: where scaled whole images come from.
    """

    keyed_by_epoch = True  # the loader asks for (epoch, index) keys (`training.loaders.EpochBatches`)

    def __init__(self, samples: Sequence[Sample], spec: PatchInput, *, seed: int, load: ScaledLoader) -> None:
        self.samples = list(samples)
        self.patch, self.scale = spec.size, spec.scale
        self.per_image, self.balance = spec.per_image, spec.class_balance
        self.seed, self.load = seed, load
        self._points: dict[int, dict[int, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self.samples) * self.per_image

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, int]:
        image, mask = self.crop(*key)
        return torch.from_numpy(image), torch.from_numpy(mask), key[1]

    def __getitems__(self, keys: Sequence[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A whole batch, as the DataLoader asks for it: images (B, P, P, 3) and masks (B, P, P)
        uint8, indices (B,)."""
        images = np.empty((len(keys), self.patch, self.patch, 3), np.uint8)
        masks = np.empty((len(keys), self.patch, self.patch), np.uint8)
        for row, (epoch, index) in enumerate(keys):
            images[row], masks[row] = self.crop(epoch, index)
        return torch.from_numpy(images), torch.from_numpy(masks), torch.tensor([index for _, index in keys])

    def crop(self, epoch: int, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Item `index`'s crop in `epoch`: image (P, P, 3) and mask (P, P), uint8."""
        sample_index = index // self.per_image
        image, mask = self.load(self.samples[sample_index], self.scale)
        # A seed sequence needs non-negative entries; base.seed may be any int.
        rng = np.random.default_rng([self.seed % 2**63, epoch, index])
        top, left = self._origin(rng, sample_index, mask)
        return cut(image, top, left, self.patch, MEAN_PAD_VALUE), cut(mask, top, left, self.patch, IGNORE_INDEX)

    def _origin(self, rng: np.random.Generator, sample_index: int, mask: np.ndarray) -> tuple[int, int]:
        """Top-left corner of the crop: on a present class with probability `balance`, else uniform."""
        height, width = mask.shape
        centre_y = centre_x = None
        if rng.random() < self.balance:
            if sample_index not in self._points:
                self._points[sample_index] = class_points(mask)
            points = self._points[sample_index]
            if points:
                chosen = points[sorted(points)[int(rng.integers(len(points)))]]
                centre_y, centre_x = divmod(int(chosen[rng.integers(len(chosen))]), width)
        return crop_start(rng, height, self.patch, centre_y), crop_start(rng, width, self.patch, centre_x)
