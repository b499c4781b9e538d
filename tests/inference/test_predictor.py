"""Shared prediction: checkpoint round trip, batching, tiling and blending, TTA."""

from __future__ import annotations

import functools


import numpy as np
import pytest
import torch
from torch import nn

from segpipe.errors import SegpipeError
from segpipe.data.tiling import Tiling, predict_tiled
from segpipe.imageio import read_image, read_image_for
from segpipe.data.spec import LetterboxInput, PatchInput
from segpipe.inference.predictor import Predictor, class_map
from segpipe.data.letterbox import Letterbox, to_tensor
from tests.helpers import PixelwiseModel, make_photo, random_image, tiny_checkpoint

CLASSES = ["background", "lesion"]


def test_predictor_rebuilds_the_model_from_the_checkpoint_alone(tmp_path):
    predictor = Predictor.from_checkpoint(tiny_checkpoint(tmp_path / "best.pt", image_size=32))
    image = random_image(20, 50)
    probs = predictor.predict_probs(image)
    assert predictor.classes == CLASSES and predictor.image_size == 32
    assert probs.shape == (2, 20, 50) and probs.dtype == torch.float32
    torch.testing.assert_close(probs.sum(0), torch.ones(20, 50))


def test_predict_probs_is_letterbox_model_softmax_restore(tmp_path):
    predictor = Predictor.from_checkpoint(tiny_checkpoint(tmp_path / "best.pt", image_size=32))
    image = random_image(20, 50)
    torch.testing.assert_close(predictor.predict_probs(image), letterboxed_probs(predictor.model, image, 32))


def letterboxed_probs(model: nn.Module, image: np.ndarray, size: int, max_scale: float | None = None) -> torch.Tensor:
    """Independent of Predictor: the letterbox primitives, the model alone on one image, softmax, restore."""
    box = Letterbox.fit(image.shape[:2], (size, size), max_scale)
    with torch.no_grad():
        logits = model.eval()(to_tensor(box.apply_image(image))[None])
    return box.restore(torch.softmax(logits, 1))[0]


def test_a_batch_of_images_of_different_sizes_gives_each_its_own_letterboxed_prediction(tmp_path):
    predictor = Predictor.from_checkpoint(tiny_checkpoint(tmp_path / "best.pt"))
    images = [random_image(20, 50, 1), random_image(32, 32, 2), random_image(41, 17, 3)]
    batched = predictor.predict_batch(images)
    for image, probs in zip(images, batched):
        assert probs.shape[1:] == image.shape[:2]
        torch.testing.assert_close(probs, letterboxed_probs(predictor.model, image, 32), atol=1e-5, rtol=0)


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(SegpipeError, match="checkpoint not found"):
        Predictor.from_checkpoint(tmp_path / "nope.pt")


def test_tta_of_a_pixelwise_model_changes_nothing():
    # A 1x1 convolution commutes with rotations and flips, so the 8-way average equals one pass.
    predictor = Predictor(PixelwiseModel(), ["a", "b", "c"], LetterboxInput(16))
    image = random_image(16, 16)
    torch.testing.assert_close(predictor.predict_probs(image, tta=True), predictor.predict_probs(image), atol=1e-6, rtol=0)
    _, tiled = predict_tiled(functools.partial(predictor.predict_batch, tta=True), image, Tiling(16), keep_probs=True)
    torch.testing.assert_close(tiled, predictor.predict_probs(image), atol=1e-5, rtol=0)


def test_tta_undoes_each_transform_before_averaging():
    # A model that marks the top-left canvas pixel: with TTA undone correctly, only that pixel is marked.
    class Corner(nn.Module):
        def forward(self, x):
            logits = torch.zeros((x.shape[0], 2, *x.shape[-2:]))
            logits[:, 1] = -10.0
            logits[:, 1, 0, 0] = 10.0
            return logits

    predictor = Predictor(Corner(), ["a", "b"], LetterboxInput(8))
    probs = predictor.predict_probs(random_image(8, 8), tta=True)
    # Each of the 8 views marks its own top-left, which maps back to the 4 corners: 2 views each.
    marked = probs[1] > 0.2
    assert marked.sum() == 4 and marked[0, 0] and marked[0, -1] and marked[-1, 0] and marked[-1, -1]
    assert probs[1, 0, 0] == pytest.approx(0.25, abs=1e-3)


PATCHES = {"sampling": "patches", "patch_size": 16, "patch_scale": 0.5}


class RedIsForeground(nn.Module):
    """Class 1 exactly where the red channel is above the mean (positive after normalisation);
    records the (H, W) of every input it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[int, int]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen += [tuple(x.shape[-2:])] * x.shape[0]
        red = x[:, 0]
        return torch.stack([torch.zeros_like(red), red], dim=1)


def test_a_patch_model_predicts_whole_images_by_its_own_tiles():
    model = RedIsForeground()
    predictor = Predictor(model, ["a", "b"], PatchInput(16, 0.5))
    assert predictor.tiling == Tiling(32, 0.25, batch_size=8)  # floor(16 / 0.5) source pixels
    image = np.zeros((70, 45, 3), np.uint8)
    image[:, :20, 0] = 255  # red left of column 20
    labels = predictor.class_maps([image])[0]
    # By hand: stride round(32 * 0.75) = 24; rows start at 0, 24, 38 (the last flush with 70),
    # columns at 0, 13 (flush with 45): 6 windows of 32 x 32, each scaled by 0.5 to the 16 x 16 input.
    assert model.seen == [(16, 16)] * 6
    assert labels.shape == (70, 45)
    # Halving blurs the red edge by a pixel or two; away from it the classes are exact.
    assert (labels[:, :17] == 1).all() and (labels[:, 23:] == 0).all()


def test_a_patch_model_never_sees_a_window_enlarged_beyond_its_training_scale(tmp_path):
    predictor = Predictor.from_checkpoint(tiny_checkpoint(tmp_path / "best.pt", image_size=16, train=PATCHES))
    window = random_image(10, 20)  # at 0.5: 5 x 10, padded into the 16 x 16 input
    box = Letterbox.fit((10, 20), (16, 16), max_scale=0.5)
    assert (box.new_h, box.new_w) == (5, 10)
    torch.testing.assert_close(predictor.predict_probs(window), letterboxed_probs(predictor.model, window, 16, 0.5))


def test_a_letterbox_model_predicts_whole_images_in_one_pass(tmp_path):
    model = RedIsForeground()
    predictor = Predictor(model, ["a", "b"], LetterboxInput(32))
    image = np.zeros((40, 64, 3), np.uint8)
    image[:, :32, 0] = 255  # the left half red
    assert predictor.tiling is None
    labels = predictor.class_maps([image])[0]
    assert model.seen == [(32, 32)]  # one pass on the canvas, no windows
    # The 40 x 64 image halves onto the canvas and back: the edge at column 32 is blurred by a
    # pixel or two, both sides are exact.
    assert (labels[:, :30] == 1).all() and (labels[:, 34:] == 0).all()


@pytest.mark.parametrize("classes", [2, 3, 5])
def test_class_map_is_the_argmax_ties_going_to_the_lower_class(classes):
    generator = torch.Generator().manual_seed(classes)
    # values on a coarse grid so many pixels tie between classes
    probs = torch.randint(0, 4, (classes, 40, 50), generator=generator).float()
    assert (probs.max(0).values == probs.sort(0).values[-2]).any()  # some ties exist
    np.testing.assert_array_equal(class_map(probs), probs.argmax(0).to(torch.uint8).numpy())


def test_a_reduced_decode_with_its_full_size_predicts_at_the_full_size_like_the_full_image(tmp_path):
    sample = make_photo(tmp_path, "p", (600, 800))
    predictor = Predictor(PixelwiseModel(classes=2), ["a", "b"], LetterboxInput(64))
    reduced, full_hw = read_image_for(sample.image, fit=predictor.canvas)
    assert reduced.shape[:2] == (75, 100)
    from_reduced = predictor.predict_batch([reduced], full_sizes=[full_hw])[0]
    from_full = predictor.predict_batch([read_image(sample.image)])[0]
    assert from_reduced.shape == from_full.shape == (2, 600, 800)
    assert (from_reduced - from_full).abs().mean() < 0.002
