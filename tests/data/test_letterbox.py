import numpy as np
import pytest
import torch

from segpipe.errors import SegpipeError
from segpipe.data.letterbox import (
    IGNORE_INDEX,
    IMAGENET_MEAN,
    IMAGENET_STD,
    MEAN_PAD_VALUE,
    Letterbox,
    letterbox_pair,
    to_tensor,
)


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def test_fit_wide_image_into_square_pads_rows_top_and_bottom():
    # 2x4 into 4x4: width limits, scale 4/4 = 1, so no resizing; 2 spare rows, 1 above, 1 below.
    box = Letterbox.fit((2, 4), (4, 4))
    assert box == Letterbox(src_h=2, src_w=4, scale=1.0, new_h=2, new_w=4, top=1, left=0, size_h=4, size_w=4)


def test_fit_tall_image_scales_down_and_pads_columns():
    # 100x50 into 64x64: scale = min(64/100, 64/50) = 0.64 -> 64x32, 32 spare columns, 16 each side.
    box = Letterbox.fit((100, 50), (64, 64))
    assert (box.scale, box.new_h, box.new_w, box.top, box.left) == (0.64, 64, 32, 0, 16)


def test_fit_upscales_small_image():
    # 10x20 into 64x64: scale = min(6.4, 3.2) = 3.2 -> 32x64, 32 spare rows, 16 each side.
    box = Letterbox.fit((10, 20), (64, 64))
    assert (box.scale, box.new_h, box.new_w, box.top, box.left) == (3.2, 32, 64, 16, 0)


def test_fit_odd_padding_puts_extra_row_at_bottom():
    # 1x4 into 4x4: 3 spare rows -> 1 above, 2 below.
    box = Letterbox.fit((1, 4), (4, 4))
    assert (box.top, box.new_h, box.size_h - box.top - box.new_h) == (1, 1, 2)


def test_fit_rejects_empty_sizes():
    with pytest.raises(SegpipeError, match="empty image"):
        Letterbox.fit((0, 4), (4, 4))
    with pytest.raises(SegpipeError, match="must be positive"):
        Letterbox.fit((4, 4), (0, 4))


def test_apply_without_resizing_keeps_content_exactly_and_pads_mask_with_ignore():
    image = _image(2, 4)
    mask = np.array([[0, 1, 2, 3], [3, 2, 1, 0]], dtype=np.uint8)
    canvas_image, canvas_mask, box = letterbox_pair(image, mask, (4, 4))

    assert box.top == 1
    np.testing.assert_array_equal(canvas_image[1:3], image)
    for row in (0, 3):
        np.testing.assert_array_equal(canvas_image[row], np.tile(MEAN_PAD_VALUE, (4, 1)))
    np.testing.assert_array_equal(canvas_mask[1:3], mask)
    # Padding is ignored, never background (0).
    np.testing.assert_array_equal(canvas_mask[[0, 3]], np.full((2, 4), IGNORE_INDEX))


def test_apply_image_uses_given_pad_value():
    canvas = Letterbox.fit((2, 4), (4, 4)).apply_image(_image(2, 4), pad_value=(0, 0, 0))
    assert (canvas[[0, 3]] == 0).all()


def test_apply_image_shrinks_to_canvas_size():
    canvas = Letterbox.fit((100, 50), (64, 64)).apply_image(_image(100, 50))
    assert canvas.shape == (64, 64, 3) and canvas.dtype == np.uint8


def test_crop_of_applied_image_is_the_resized_image():
    # A constant colour resizes to itself, so the crop is exactly that colour at exactly the new
    # size, and the padding (black here) is exactly what was cut off.
    colour = np.array([10, 200, 30], dtype=np.uint8)
    image = np.broadcast_to(colour, (100, 50, 3)).copy()
    box = Letterbox.fit(image.shape[:2], (64, 64))
    canvas = box.apply_image(image, pad_value=(0, 0, 0)).transpose(2, 0, 1)  # (3, 64, 64)

    cropped = box.crop(canvas)
    assert cropped.shape == (3, 64, 32)
    np.testing.assert_array_equal(cropped, np.broadcast_to(colour[:, None, None], (3, 64, 32)))
    assert canvas.sum() == cropped.sum()


def test_crop_of_applied_mask_is_the_nearest_upscaled_mask():
    # 2x2 into 4x8: scale = min(4/2, 8/2) = 2 -> 4x4, left = 2. Nearest upscaling by 2 repeats
    # every label in a 2x2 block.
    mask = np.array([[0, 1], [2, 3]], dtype=np.uint8)
    box = Letterbox.fit((2, 2), (4, 8))
    canvas = box.apply_mask(mask)
    expected = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]], dtype=np.uint8)
    np.testing.assert_array_equal(box.crop(canvas), expected)
    np.testing.assert_array_equal(canvas[:, [0, 1, 6, 7]], np.full((4, 4), IGNORE_INDEX))


def test_crop_works_on_batched_tensors():
    box = Letterbox.fit((2, 4), (4, 4))
    batch = torch.arange(2 * 3 * 16).view(2, 3, 4, 4)
    assert torch.equal(box.crop(batch), batch[:, :, 1:3, :])


def test_crop_rejects_wrong_size():
    with pytest.raises(SegpipeError, match=r"letterbox size \(4, 4\)"):
        Letterbox.fit((2, 4), (4, 4)).crop(np.zeros((5, 4)))


def test_nearest_keeps_mask_values_in_the_original_set():
    rng = np.random.default_rng(1)
    mask = rng.choice(np.array([0, 3, 7], dtype=np.uint8), size=(37, 53))
    box = Letterbox.fit(mask.shape, (64, 64))
    canvas = box.apply_mask(mask)
    assert set(np.unique(box.crop(canvas)).tolist()) <= {0, 3, 7}
    assert set(np.unique(canvas).tolist()) <= {0, 3, 7, IGNORE_INDEX}
    assert (canvas == IGNORE_INDEX).sum() == 64 * 64 - box.new_h * box.new_w


def test_restore_gives_source_size():
    box = Letterbox.fit((100, 50), (64, 64))
    assert box.restore(torch.rand(4, 64, 64)).shape == (4, 100, 50)
    assert box.restore(torch.rand(2, 4, 64, 64)).shape == (2, 4, 100, 50)


def test_restore_maps_letterboxed_labels_back_onto_the_source():
    # The 2x2 mask above, one-hot on the 4x8 canvas: restoring crops columns 2..5 and halves the
    # size; every 2x2 block holds one label, so bilinear averaging returns that label exactly.
    mask = np.array([[0, 1], [2, 3]], dtype=np.uint8)
    box = Letterbox.fit((2, 2), (4, 8))
    canvas = torch.from_numpy(box.apply_mask(mask)).long()
    one_hot = torch.stack([(canvas == c).float() for c in range(4)])  # (4, 4, 8)
    restored = box.restore(one_hot)
    assert restored.shape == (4, 2, 2)
    assert torch.equal(restored.argmax(0), torch.from_numpy(mask).long())
    torch.testing.assert_close(restored.sum(0), torch.ones(2, 2))


def test_restore_rejects_integer_labels():
    with pytest.raises(SegpipeError, match="float probabilities"):
        Letterbox.fit((2, 4), (4, 4)).restore(torch.zeros(1, 4, 4, dtype=torch.long))


def test_identity_when_sizes_are_equal():
    image, mask = _image(5, 7), np.random.default_rng(2).integers(0, 4, size=(5, 7), dtype=np.uint8)
    canvas_image, canvas_mask, box = letterbox_pair(image, mask, (5, 7))
    assert box.is_identity and box.scale == 1.0 and (box.top, box.left) == (0, 0)
    np.testing.assert_array_equal(canvas_image, image)
    np.testing.assert_array_equal(canvas_mask, mask)
    probs = torch.rand(3, 5, 7)
    assert torch.equal(box.restore(probs), probs)


def test_letterbox_pair_rejects_mismatched_sizes():
    with pytest.raises(SegpipeError, match="image of size 4x6 and mask of size 4x5"):
        letterbox_pair(_image(4, 6), np.zeros((4, 5), dtype=np.uint8), (8, 8))


def test_apply_rejects_image_of_another_size():
    with pytest.raises(SegpipeError, match="does not match the letterbox source size 2x4"):
        Letterbox.fit((2, 4), (4, 4)).apply_mask(np.zeros((3, 4), dtype=np.uint8))


def test_to_tensor_normalises_by_imagenet_mean_and_std():
    image = np.zeros((2, 3, 3), dtype=np.uint8)
    image[0, 0] = (255, 0, 0)
    image[1, 2] = MEAN_PAD_VALUE
    tensor = to_tensor(image)
    assert tensor.shape == (3, 2, 3) and tensor.dtype == torch.float32
    # Red 255 -> (1 - 0.485) / 0.229; green 0 -> -0.456 / 0.224.
    assert tensor[0, 0, 0].item() == pytest.approx((1 - IMAGENET_MEAN[0]) / IMAGENET_STD[0], abs=1e-6)
    assert tensor[1, 0, 0].item() == pytest.approx(-IMAGENET_MEAN[1] / IMAGENET_STD[1], abs=1e-6)
    # The padding colour normalises to (nearly) zero: within half a grey level.
    assert tensor[:, 1, 2].abs().max().item() < 0.5 / 255 / min(IMAGENET_STD)


def test_to_tensor_rejects_non_uint8_rgb():
    with pytest.raises(SegpipeError, match=r"\(H, W, 3\) uint8"):
        to_tensor(np.zeros((2, 2, 3), dtype=np.float32))
    with pytest.raises(SegpipeError, match=r"\(H, W, 3\) uint8"):
        to_tensor(np.zeros((2, 2), dtype=np.uint8))


def test_fit_with_max_scale_pads_instead_of_enlarging():
    # 4x6 into 16x16 would be enlarged 16/6; capped at 2, it becomes 8x12, centred.
    box = Letterbox.fit((4, 6), (16, 16), max_scale=2.0)
    assert box == Letterbox(src_h=4, src_w=6, scale=2.0, new_h=8, new_w=12, top=4, left=2, size_h=16, size_w=16)
    # A cap above the fitting scale changes nothing.
    assert Letterbox.fit((20, 10), (16, 16), max_scale=1.0) == Letterbox.fit((20, 10), (16, 16))
