"""What the training loop reads: letterboxed uint8 (image, mask, index) items of a list of samples.

Items stay uint8 until they reach the device, where `segpipe.data.batches` normalises and
augments whole batches: a batch of uint8 is a quarter of the bytes of a float one to copy, and
the per-pixel arithmetic runs where it is fastest.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from segpipe.data.cache import DecodedCache, Letterboxed
from segpipe.layout import Sample


class SegmentationDataset(Dataset):
    """Letterboxed items: image (S, S, 3) uint8 RGB, mask (S, S) uint8 class ids (255 = padding or
    ignored) and the item's index (which `OnlineAugment` draws by).

    Args:
        samples: the (image, mask) pairs.
        image_size: the square side S.
        cache: where decoded items are kept (`DecodedCache`); None decodes on every access.
    """

    keyed_by_epoch = False  # items are the same every epoch: plain indices (`training.loaders.EpochBatches`)

    def __init__(self, samples: Sequence[Sample], image_size: int, cache: DecodedCache | None = None):
        self.samples = list(samples)
        self.shaping = Letterboxed(image_size)
        self.cache = cache

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        image, mask = self._item(index)
        return torch.from_numpy(image), torch.from_numpy(mask), index

    def __getitems__(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A whole batch, as the DataLoader asks for it: images (B, S, S, 3) and masks (B, S, S)
        uint8, indices (B,). Each item is copied once, straight into the batch (no collation)."""
        side = self.shaping.size
        images = np.empty((len(indices), side, side, 3), np.uint8)
        masks = np.empty((len(indices), side, side), np.uint8)
        for row, index in enumerate(indices):
            images[row], masks[row] = self._item(index)
        return torch.from_numpy(images), torch.from_numpy(masks), torch.tensor(list(indices))

    def _item(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        sample = self.samples[index]
        if self.cache is None:
            return self.shaping.build(sample)
        return self.cache.get(sample, self.shaping)
