"""What training reads: which samples, as which tensors, with which online augmentation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from segpipe.prep.augment import augment_dataset
from segpipe.config import AugmentSection, SplitSection
from segpipe.data.dataset import SegmentationDataset
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


def test_items_are_normalised_images_and_long_masks_letterboxed_with_ignored_padding(tmp_path: Path):
    processed = make_processed(tmp_path / "processed", count=1, size=(24, 32))
    dataset = SegmentationDataset(samples_in(processed, ["img000"]), image_size=32)
    image, mask = dataset[0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32
    assert mask.shape == (32, 32) and mask.dtype == torch.int64
    # A 24x32 image fills a 32x32 canvas at scale 1 with 8 rows of padding, 4 above and 4 below.
    padding_rows = (mask == 255).all(dim=1)
    assert padding_rows.tolist() == [True] * 4 + [False] * 24 + [True] * 4
    content = mask[4:28]
    assert set(content.unique().tolist()) == {0, 1}
    assert content[6:12, 8:16].eq(1).all()  # make_processed's class-1 square: rows 6-11, columns 8-15
    assert image.abs().max() < 3  # ImageNet-normalised, not 0-255


def test_online_augmentation_is_fixed_by_seed_epoch_and_sample_and_changes_across_epochs(tmp_path: Path):
    processed = make_processed(tmp_path / "processed", count=6, size=(32, 32))
    samples = samples_in(processed, [f"img{i:03d}" for i in range(6)])

    def items(seed: int, epoch: int, order=range(6)) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        dataset = SegmentationDataset(samples, 32, online_augment=True, seed=seed)
        dataset.set_epoch(epoch)
        return {i: dataset[i] for i in order}

    def same(a: dict, b: dict) -> list[bool]:
        return [torch.equal(a[i][0], b[i][0]) and torch.equal(a[i][1], b[i][1]) for i in range(6)]

    epoch_3 = items(seed=1, epoch=3)
    assert all(same(epoch_3, items(seed=1, epoch=3, order=reversed(range(6)))))
    assert not all(same(epoch_3, items(seed=1, epoch=4)))
    assert not all(same(epoch_3, items(seed=2, epoch=3)))
    plain = {i: SegmentationDataset(samples, 32)[i] for i in range(6)}
    assert not all(same(epoch_3, plain))
    for i, (image, mask) in epoch_3.items():  # flips move image and mask together
        original = plain[i][1]
        flips = [original, original.flip(0), original.flip(1), original.flip(0).flip(1)]
        assert any(torch.equal(mask, flipped) for flipped in flips)
