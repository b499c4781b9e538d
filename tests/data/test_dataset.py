"""What training reads: which samples, as which tensors, with which online augmentation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from segpipe.prep.augment import augment_dataset
from segpipe.config import AugmentSection, SplitSection
from segpipe.data.cache import DecodedCache
from segpipe.data.dataset import SegmentationDataset
from segpipe.data.letterbox import MEAN_PAD_VALUE
from segpipe.imageio import read_image
from segpipe.layout import read_list, samples_in, training_samples, validation_samples
from segpipe.prep.split import write_split
from tests.helpers import make_processed


@pytest.fixture
def split_dataset(tmp_path: Path) -> tuple[Path, Path, Path]:
    """8 converted images, a 6:2 split and 2 augmented copies of each training image."""
    processed = make_processed(tmp_path / "processed", count=8)
    splits = tmp_path / "splits"
    write_split(processed, splits, SplitSection(val_fraction=0.25), seed=0)
    augmented = tmp_path / "augmented"
    augment_dataset(processed, splits, augmented, AugmentSection(copies=2), seed=0, workers=1, progress=False)
    return processed, splits, augmented


def test_training_samples_are_the_train_ids_and_their_augmented_copies_never_val_ids(split_dataset):
    processed, splits, augmented = split_dataset
    train, val = read_list(splits / "train.txt"), read_list(splits / "val.txt")
    assert train and val
    samples = training_samples(processed, splits, augmented)
    ids = [s.id for s in samples]
    augmented_ids = sorted(p.stem for p in (augmented / "masks").glob("*.png"))
    assert len(augmented_ids) == 2 * len(train)
    assert ids == train + augmented_ids
    assert not set(ids) & set(val)
    for sample in samples:
        assert sample.image.is_file() and sample.mask.is_file()
        assert sample.image.parent.parent == (augmented if sample.id in augmented_ids else processed)
    assert [s.id for s in training_samples(processed, splits, None)] == train
    assert [s.id for s in validation_samples(processed, splits)] == val


@pytest.mark.parametrize("cached", [True, False], ids=["from the cache", "decoded each time"])
def test_items_are_uint8_images_and_masks_letterboxed_with_ignored_padding_and_their_index(tmp_path: Path, cached):
    processed = make_processed(tmp_path / "processed", count=2, size=(24, 32))
    cache = DecodedCache(tmp_path / "cache") if cached else None
    dataset = SegmentationDataset(samples_in(processed, ["img000", "img001"]), image_size=32, cache=cache)
    image, mask, index = dataset[1]
    assert index == 1
    assert image.shape == (32, 32, 3) and image.dtype == torch.uint8
    assert mask.shape == (32, 32) and mask.dtype == torch.uint8
    # A 24x32 image fills a 32x32 canvas at scale 1 with 8 rows of padding, 4 above and 4 below.
    padding_rows = (mask == 255).all(dim=1)
    assert padding_rows.tolist() == [True] * 4 + [False] * 24 + [True] * 4
    assert image[0].eq(torch.tensor(MEAN_PAD_VALUE, dtype=torch.uint8)).all()
    source = torch.from_numpy(np.array(read_image(processed / "images" / "img001.png")))
    assert torch.equal(image[4:28], source)  # scale 1: the pixels themselves
    content = mask[4:28]
    assert set(content.unique().tolist()) == {0, 1}
    assert content[6:12, 8:16].eq(1).all()  # make_processed's class-1 square: rows 6-11, columns 8-15
    assert (tmp_path / "cache").exists() == cached


def test_a_batch_read_at_once_is_the_items_stacked(tmp_path: Path):
    processed = make_processed(tmp_path / "processed", count=3, size=(24, 32))
    dataset = SegmentationDataset(samples_in(processed, ["img000", "img001", "img002"]), 32, DecodedCache(tmp_path / "cache"))
    images, masks, indices = dataset.__getitems__([2, 0])
    assert images.shape == (2, 32, 32, 3) and masks.shape == (2, 32, 32) and indices.tolist() == [2, 0]
    for row, index in enumerate([2, 0]):
        image, mask, _ = dataset[index]
        assert torch.equal(images[row], image) and torch.equal(masks[row], mask)
