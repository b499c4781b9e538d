"""What the training loop reads: letterboxed (image, mask) tensors of a list of samples."""

from __future__ import annotations

from collections.abc import Sequence

import albumentations as A
import numpy as np
import torch
from torch.utils.data import Dataset

from segpipe.imageio import read_class_mask, read_image
from segpipe.data.letterbox import letterbox_pair, to_tensor
from segpipe.layout import Sample
from segpipe.prep.split import id_position



def online_transform(seed: int) -> A.Compose:
    """Light augmentation drawn anew every epoch, on top of the offline set."""
    return A.Compose(
        [
            A.HorizontalFlip(p=0.5),
            A.VerticalFlip(p=0.5),
            A.RandomBrightnessContrast(brightness_limit=0.1, contrast_limit=0.1, p=0.5),
        ],
        seed=seed,
    )


class SegmentationDataset(Dataset):
    """Letterboxed (image, mask) tensors: image (3, S, S) normalised float, mask (S, S) long.

    Online augmentation, when on, is seeded by (seed, epoch, index), so a sample's draw does not
    depend on which DataLoader worker loads it, and a resumed run sees the same draws.
    """

    def __init__(self, samples: Sequence[Sample], image_size: int, *, online_augment: bool = False, seed: int = 0):
        self.samples = list(samples)
        self.size = (image_size, image_size)
        self.online_augment = online_augment
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        sample = self.samples[index]
        image = read_image(sample.image)
        mask = read_class_mask(sample.mask)
        if self.online_augment:
            draw = int(id_position(f"{sample.id}@{self.epoch}", self.seed) * 2**31)
            out = online_transform(draw)(image=image, mask=mask)
            image, mask = out["image"], out["mask"]
        image, mask, _ = letterbox_pair(image, mask, self.size)
        return to_tensor(image), torch.from_numpy(mask.astype(np.int64))
