"""Batches on the device: normalised like one image at a time, augmented by (seed, epoch, index)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy import stats

from segpipe.data.batches import (
    DeviceBatches,
    OnlineAugment,
    RandomBrightnessContrast,
    RandomFlip,
    default_online_transforms,
)
from segpipe.data.letterbox import IMAGENET_MEAN, IMAGENET_STD, normalize, to_tensor
from tests.helpers import random_image


def test_a_flip_turns_image_and_mask_together_only_where_the_draw_is_below_p():
    images = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).view(2, 3, 2, 2)
    masks = torch.tensor([[[0, 1], [2, 3]], [[4, 5], [6, 7]]])
    u = torch.tensor([[0.2], [0.8]])
    out_images, out_masks = RandomFlip(-1, p=0.5)(images, masks, u)
    assert out_masks.tolist() == [[[1, 0], [3, 2]], [[4, 5], [6, 7]]]
    assert torch.equal(out_images[0], images[0].flip(-1)) and torch.equal(out_images[1], images[1])
    _, up_down = RandomFlip(-2, p=0.5)(images, masks, u)
    assert up_down.tolist() == [[[2, 3], [0, 1]], [[4, 5], [6, 7]]]


def test_brightness_contrast_scales_shifts_and_clips_by_hand():
    images = torch.tensor([100.0, 250.0, 0.0]).view(1, 3, 1, 1).repeat(2, 1, 1, 1)
    # sample 0: on (0.0 < p), contrast 1 + 0.1 * (2 * 1.0 - 1) = 1.1, brightness 255 * 0.1 * 0.5 = 12.75
    # sample 1: off (0.9 >= p)
    u = torch.tensor([[0.0, 1.0, 0.75], [0.9, 1.0, 0.75]])
    out, masks = RandomBrightnessContrast(0.1, 0.1, p=0.5)(images, torch.zeros(2, 1, 1), u)
    assert out[0].flatten().tolist() == pytest.approx([122.75, 255.0, 12.75])  # 250 * 1.1 + 12.75 clipped
    assert torch.equal(out[1], images[1])
    assert torch.equal(masks, torch.zeros(2, 1, 1))


def test_draws_are_fixed_by_seed_epoch_and_index_whatever_the_batch():
    augment = OnlineAugment(default_online_transforms(), seed=1, count=6)
    table = augment.draws(3).clone()
    assert table.shape == (6, 5)
    assert torch.equal(OnlineAugment(default_online_transforms(), seed=1, count=6).draws(3), table)
    assert not torch.equal(augment.draws(4), table)
    assert not torch.equal(OnlineAugment(default_online_transforms(), seed=2, count=6).draws(3), table)
    images = torch.rand(6, 3, 8, 8) * 255
    masks = torch.randint(0, 2, (6, 8, 8))
    whole, whole_masks = augment(images, masks, torch.arange(6), epoch=3)
    for batch in ([4, 1], [0, 5, 2], [3]):  # other batches, other orders: the same draw per index
        part, part_masks = augment(images[batch], masks[batch], torch.tensor(batch), epoch=3)
        assert torch.equal(part, whole[batch]) and torch.equal(part_masks, whole_masks[batch])
    assert not torch.equal(whole, images)


@pytest.mark.parametrize("channels_last", [True, False])
def test_device_batches_are_what_to_tensor_gives_each_image_in_the_chosen_memory_format(channels_last):
    pictures = [random_image(6, 10, seed=i) for i in range(3)]
    images = torch.from_numpy(np.stack(pictures))  # (B, H, W, 3) uint8, as the loader collates them
    masks = torch.tensor(np.stack([np.full((6, 10), v, np.uint8) for v in (0, 1, 255)]))
    out, out_masks = DeviceBatches(torch.device("cpu"), channels_last=channels_last)((images, masks, torch.arange(3)))
    assert out.shape == (3, 3, 6, 10) and out.dtype == torch.float32
    assert out.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    for picture, normalised in zip(pictures, out):
        torch.testing.assert_close(normalised, to_tensor(picture), rtol=0, atol=1e-6)
    assert out_masks.dtype == torch.int64 and out_masks[:, 0, 0].tolist() == [0, 1, 255]


def test_device_batches_augment_only_training_batches_and_only_when_asked():
    images = torch.from_numpy(np.stack([random_image(8, 8, seed=i) for i in range(4)]))
    batch = (images, torch.zeros(4, 8, 8, dtype=torch.uint8), torch.arange(4))
    plain = DeviceBatches(torch.device("cpu"), channels_last=False)
    augmenting = DeviceBatches(
        torch.device("cpu"), channels_last=False, augment=OnlineAugment(default_online_transforms(), 0, 4)
    )
    assert torch.equal(augmenting(batch)[0], plain(batch)[0])  # validation: no epoch, no augmentation
    assert torch.equal(plain(batch, epoch=0)[0], plain(batch)[0])
    assert not torch.equal(augmenting(batch, epoch=0)[0], plain(batch)[0])


def test_normalize_is_the_imagenet_formula_for_uint8_and_float_batches():
    images = torch.randint(0, 256, (2, 3, 4, 5), dtype=torch.uint8)
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    expected = (images.float() / 255 - mean) / std
    torch.testing.assert_close(normalize(images), expected, rtol=0, atol=1e-6)
    floats = images.float()
    torch.testing.assert_close(normalize(floats), expected, rtol=0, atol=1e-6)
    assert torch.equal(floats, images.float())  # the input is left alone


# --- The online draws: each transform with its own p, independently, parameters over their range. ---

def augmented_many(count: int = 2000, epoch: int = 0, seed: int = 3):
    """Push `count` 2 x 2 samples through the default online augmentation and read back, per
    sample, which flips fired and the contrast alpha and brightness beta that were applied.

    Every sample's mask is [[0, 1], [2, 3]] and its image 100 + 10 * mask in each channel, so the
    output mask tells the flips, and out = alpha * (100 + 10 * mask_out) + beta the other two.
    """
    masks = torch.tensor([[0, 1], [2, 3]]).repeat(count, 1, 1)
    images = (100.0 + 10 * masks).unsqueeze(1).repeat(1, 3, 1, 1)
    out, out_masks = OnlineAugment(default_online_transforms(), seed, count)(images, masks, torch.arange(count), epoch)
    hflip = out_masks[:, 0, 0] % 2 == 1
    vflip = out_masks[:, 0, 0] >= 2
    flat_image, flat_mask = out[:, 0].reshape(count, 4).double(), out_masks.reshape(count, 4)
    low, high = flat_image.gather(1, flat_mask.argmin(1, keepdim=True)), flat_image.gather(1, flat_mask.argmax(1, keepdim=True))
    alpha = ((high - low) / 30).squeeze(1)
    beta = (low.squeeze(1) - 100 * alpha)
    contrast = ((alpha - 1).abs() > 1e-4) | (beta.abs() > 1e-3)
    return hflip.numpy(), vflip.numpy(), contrast.numpy(), alpha.numpy(), beta.numpy()


def test_online_transforms_fire_each_with_its_own_probability_and_independently():
    fired = dict(zip(("hflip", "vflip", "contrast"), augmented_many()[:3]))
    count = len(fired["hflip"])
    for name, on in fired.items():
        assert stats.binomtest(int(on.sum()), count, 0.5).pvalue > 0.001, (name, on.sum())
    for a, b in itertools.combinations(fired, 2):
        table = np.array([[np.sum(~fired[a] & ~fired[b]), np.sum(~fired[a] & fired[b])],
                          [np.sum(fired[a] & ~fired[b]), np.sum(fired[a] & fired[b])]])
        assert stats.chi2_contingency(table, correction=False)[1] > 0.001, (a, b, table)


def test_online_contrast_and_brightness_spread_uniformly_over_their_range():
    _, _, contrast, alpha, beta = augmented_many()
    alpha, beta = alpha[contrast], beta[contrast]
    for values, low, high in ((alpha, 0.9, 1.1), (beta, -25.5, 25.5)):
        width = high - low
        assert low - 1e-4 <= values.min() < low + 0.03 * width and high - 0.03 * width < values.max() <= high + 1e-4
        assert stats.kstest(values, stats.uniform(loc=low, scale=width).cdf).pvalue > 0.001
    assert stats.pearsonr(alpha, beta)[1] > 0.001  # drawn independently of each other


def test_online_draws_change_with_the_epoch_independently_and_repeat_with_the_seed():
    first, again, later = augmented_many(epoch=0), augmented_many(epoch=0), augmented_many(epoch=1)
    for a, b in zip(first, again):
        assert np.array_equal(a, b)
    # A sample's flip in epoch 1 is independent of its flip in epoch 0.
    table = np.array([[np.sum(~first[0] & ~later[0]), np.sum(~first[0] & later[0])],
                      [np.sum(first[0] & ~later[0]), np.sum(first[0] & later[0])]])
    assert stats.chi2_contingency(table, correction=False)[1] > 0.001, table
