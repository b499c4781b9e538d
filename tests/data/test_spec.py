from __future__ import annotations

import pytest

from segpipe.data.cache import Letterboxed, Scaled
from segpipe.data.spec import LetterboxInput, PatchInput, spec_from_dict, spec_from_old_checkpoint, spec_from_train
from segpipe.errors import SegpipeError
from tests.helpers import tiny_params


@pytest.mark.parametrize(
    ("patch", "scale", "tile"),
    # floor(patch / scale), by hand: 64 / 0.6 = 106.67 -> 106 (rounding would give 107, a window
    # that, scaled by 0.6, is 64.2 px and would be shrunk below the training scale to fit).
    [(256, 1.0, 256), (256, 0.5, 512), (96, 0.3, 320), (90, 0.3, 300), (64, 3.0, 21), (64, 0.6, 106), (16, 0.75, 21)],
)
def test_patch_windows_are_the_floor_of_size_over_scale(patch, scale, tile):
    tiling = PatchInput(patch, scale).tiling()
    assert tiling.tile == tile
    assert tiling.tile * scale <= patch + 1e-9  # a whole window fits the model input at that scale
    assert (tiling.overlap, tiling.batch_size) == (0.25, 8)


def test_a_letterbox_model_is_predicted_whole_on_its_canvas():
    spec = LetterboxInput(96)
    assert spec.tiling() is None and spec.canvas == (96, 96) and spec.max_scale is None
    assert (spec.train_shaping(), spec.val_shaping()) == (Letterboxed(96), Letterboxed(96))


def test_a_patch_model_trains_at_its_scale_and_validates_at_full_resolution():
    spec = PatchInput(64, 0.6, 3, 0.5)
    assert spec.canvas is None and spec.max_scale == 0.6
    assert (spec.train_shaping(), spec.val_shaping()) == (Scaled(0.6), Scaled(1.0))
    assert spec.val_dataset([], None) is None


def test_the_spec_is_built_from_the_train_section():
    assert spec_from_train(tiny_params({"image_size": 48}).train) == LetterboxInput(48)
    train = tiny_params({"sampling": "patches", "patch_size": 32, "patch_scale": 0.6, "patches_per_image": 3,
                         "patch_class_balance": 0.5}).train
    assert spec_from_train(train) == PatchInput(32, 0.6, 3, 0.5)


@pytest.mark.parametrize("spec", [LetterboxInput(32), PatchInput(16, 0.6, 2, 0.1)], ids=["letterbox", "patches"])
def test_a_spec_reads_back_what_it_writes(spec):
    assert spec_from_dict(spec.to_dict()) == spec


def test_old_checkpoint_fields_map_to_a_spec():
    params = {"train": {"patches_per_image": 5, "patch_class_balance": 0.2}}
    old_patches = {"image_size": 16, "sampling": {"mode": "patches", "patch_size": 16, "patch_scale": 0.5}, "params": params}
    assert spec_from_old_checkpoint(old_patches) == PatchInput(16, 0.5, 5, 0.2)
    # Written before patch training: no "sampling" at all.
    assert spec_from_old_checkpoint({"image_size": 32, "params": {}}) == LetterboxInput(32)


def test_an_unknown_mode_is_named():
    with pytest.raises(ValueError, match="unknown input mode 'mosaic', expected letterbox or patches"):
        spec_from_dict({"mode": "mosaic", "size": 16})


def test_a_patch_spec_refuses_a_scale_of_zero():
    with pytest.raises(SegpipeError, match="scale > 0, got size 16, scale 0"):
        PatchInput(16, 0)


@pytest.mark.parametrize(
    ("spec", "multiple", "message"),
    [
        (LetterboxInput(40), 16, r"^train\.image_size 40 must be a multiple of 16 for model\.backbone plain \(its total stride\); try 48$"),
        (PatchInput(48, 1.0), 32, r"^train\.patch_size 48 must be a multiple of 32 for model\.backbone plain \(its total stride\); try 64$"),
    ],
)
def test_the_one_stride_check_names_the_key_and_the_next_valid_size(spec, multiple, message):
    import re

    assert re.match(message, spec.stride_error(multiple, "plain"))
    assert LetterboxInput(32).stride_error(16, "plain") is None
