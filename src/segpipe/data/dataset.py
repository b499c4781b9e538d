"""What the training loop reads: letterboxed uint8 (image, mask, index) items of a list of samples.

Items stay uint8 until they reach the device, where `segpipe.data.batches` normalises and
augments whole batches: a batch of uint8 is a quarter of the bytes of a float one to copy, and
the per-pixel arithmetic runs where it is fastest.
"""

from __future__ import annotations

from collections.abc import Sequence

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

    def __init__(self, samples: Sequence[Sample], image_size: int, cache: DecodedCache | None = None):
        self.samples = list(samples)
        self.shaping = Letterboxed(image_size)
        self.cache = cache

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        sample = self.samples[index]
        if self.cache is None:
            image, mask = self.shaping.build(sample)
        else:
            image, mask = self.cache.get(sample, self.shaping)
        return torch.from_numpy(image), torch.from_numpy(mask), index

    def warm_cache(self, *, workers: int = 0, progress: bool = False) -> int:
        """Build the cache entries this dataset will read (none without a cache); returns how many were built."""
        if self.cache is None:
            return 0
        return self.cache.warm(self.samples, self.shaping, workers=workers, progress=progress)
