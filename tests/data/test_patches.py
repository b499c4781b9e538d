"""Patch sampling: where crops fall, what pads them, how they are seeded, where images come from."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from segpipe.data import cache as cache_module
from segpipe.data.letterbox import MEAN_PAD_VALUE
from segpipe.data.spec import spec_from_train
from segpipe.data.patches import MemoryScaledCache, PatchDataset, class_points, crop_start, cut
from segpipe.imageio import IGNORE_INDEX, write_mask
from segpipe.layout import Sample
from tests.helpers import random_image, tiny_params


def write_sample(root: Path, image: np.ndarray, mask: np.ndarray, name: str = "s") -> Sample:
    root.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(root / f"{name}.png")
    write_mask(root / f"{name}_mask.png", mask)
    return Sample(name, root / f"{name}.png", root / f"{name}_mask.png")


def patch_config(**train):
    return spec_from_train(tiny_params({"sampling": "patches", "patch_size": 16, "patches_per_image": 3, **train}).train)


def test_cut_copies_the_window_and_fills_what_lies_outside():
    array = np.arange(12, dtype=np.uint8).reshape(3, 4)
    assert cut(array, 1, 2, 2, 255).tolist() == [[6, 7], [10, 11]]
    # Starting above and left of the array: the first row and column are fill.
    assert cut(array, -1, -1, 3, 255).tolist() == [[255, 255, 255], [255, 0, 1], [255, 4, 5]]
    assert cut(np.zeros((2, 2, 3), np.uint8), 0, 0, 3, (1, 2, 3))[2, 2].tolist() == [1, 2, 3]


def test_crop_start_keeps_the_crop_inside_or_the_image_inside_the_crop():
    rng = np.random.default_rng(0)
    starts = {crop_start(rng, 10, 4) for _ in range(200)}
    assert starts == set(range(7))  # every start that keeps 4 pixels inside 10
    smaller = {crop_start(rng, 3, 5) for _ in range(200)}
    assert smaller == {-2, -1, 0}  # a 3-pixel image anywhere inside the 5-pixel crop
    assert crop_start(rng, 10, 4, centre=5) == 3
    assert crop_start(rng, 10, 4, centre=0) == 0 and crop_start(rng, 10, 4, centre=9) == 6


def test_class_points_list_present_foreground_classes_only():
    mask = np.array([[0, 1, 1], [255, 2, 0]], np.uint8)
    points = class_points(mask)
    assert sorted(points) == [1, 2]
    assert points[1].tolist() == [1, 2] and points[2].tolist() == [4]
    many = class_points(np.ones((10, 10), np.uint8), max_points=7)
    assert len(many[1]) == 7 and len(set(many[1].tolist())) == 7


def test_a_patch_of_a_native_image_is_a_window_of_it(tmp_path: Path):
    image = random_image(40, 50)
    mask = (np.arange(40 * 50).reshape(40, 50) % 3).astype(np.uint8)
    sample = write_sample(tmp_path, image, mask)
    dataset = PatchDataset([sample], patch_config(patch_class_balance=0.0), seed=1, load=MemoryScaledCache())
    assert len(dataset) == 3
    for index in range(3):
        patch, patch_mask, item = dataset[0, index]
        assert patch.shape == (16, 16, 3) and patch_mask.shape == (16, 16) and item == index
        assert patch.dtype == patch_mask.dtype == torch.uint8
        # Find where the crop came from by its mask, then check the image there too.
        matches = [
            (top, left) for top in range(25) for left in range(35)
            if np.array_equal(mask[top : top + 16, left : left + 16], patch_mask.numpy())
        ]
        assert any(np.array_equal(patch.numpy(), image[t : t + 16, l : l + 16]) for t, l in matches)


def test_an_image_smaller_than_a_patch_is_padded_with_the_letterbox_colour_and_ignored_mask(tmp_path: Path):
    sample = write_sample(tmp_path, random_image(10, 12), np.ones((10, 12), np.uint8))
    dataset = PatchDataset([sample], patch_config(patch_scale=0.5), seed=0, load=MemoryScaledCache())
    patch, mask, _ = dataset[0, 0]
    assert (mask == 1).sum() == 5 * 6  # the image at half size, all of it inside the crop
    assert (mask == IGNORE_INDEX).sum() == 16 * 16 - 30
    outside = (mask == IGNORE_INDEX).nonzero()[0]
    assert patch[outside[0], outside[1]].tolist() == list(MEAN_PAD_VALUE)


def test_draws_are_fixed_by_seed_epoch_and_index(tmp_path: Path):
    sample = write_sample(tmp_path, random_image(60, 60), (random_image(60, 60)[..., 0] % 3).astype(np.uint8))
    config = patch_config()

    def items(seed: int, epoch: int) -> list[torch.Tensor]:
        dataset = PatchDataset([sample], config, seed=seed, load=MemoryScaledCache())
        return [dataset[epoch, index][0] for index in (2, 0, 1)]  # any order: each item has its own draw

    first = items(3, 1)
    assert all(torch.equal(a, b) for a, b in zip(first, items(3, 1)))
    assert not all(torch.equal(a, b) for a, b in zip(first, items(3, 2)))
    assert not all(torch.equal(a, b) for a, b in zip(first, items(4, 1)))


def test_class_balance_centres_crops_on_rare_classes(tmp_path: Path):
    mask = np.zeros((100, 100), np.uint8)
    mask[70:73, 10:13] = 2  # 9 pixels of a rare class in one corner
    sample = write_sample(tmp_path, random_image(100, 100), mask)

    def rare_share(balance: float) -> float:
        dataset = PatchDataset([sample], patch_config(patches_per_image=200, patch_class_balance=balance), seed=0, load=MemoryScaledCache())
        return float(np.mean([(dataset[0, i][1] == 2).any().item() for i in range(len(dataset))]))

    assert rare_share(1.0) == 1.0
    assert rare_share(0.0) < 0.1  # uniform: 13 x 16 of the 85 x 85 crop positions reach it
    assert 0.35 < rare_share(0.5) < 0.75


def test_each_image_is_decoded_once_however_many_patches_are_cut(tmp_path: Path, monkeypatch):
    samples = [write_sample(tmp_path, random_image(30, 30, i), np.ones((30, 30), np.uint8), f"s{i}") for i in range(2)]
    reads = []
    real = cache_module.read_image_for
    monkeypatch.setattr(cache_module, "read_image_for", lambda path, **how: reads.append(path) or real(path, **how))
    dataset = PatchDataset(samples, patch_config(patches_per_image=5), seed=0, load=MemoryScaledCache())
    for epoch in range(2):
        dataset.__getitems__([(epoch, index) for index in range(len(dataset))])
    assert sorted(reads) == sorted(s.image for s in samples)
