"""Shared prediction: checkpoint round trip, batching, tiling and blending, TTA."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from segpipe.config import Params
from segpipe.errors import SegpipeError
from segpipe.inference import Predictor, class_map, weight_window, window_starts
from segpipe.letterbox import Letterbox, to_tensor
from segpipe.models import build_model
from segpipe.training.checkpoint import save_checkpoint

CLASSES = ["background", "lesion"]


def tiny_checkpoint(path: Path, classes=CLASSES, image_size: int = 32, seed: int = 0) -> Path:
    """A real (random-weight) plain U-Net checkpoint with the keys training writes."""
    torch.manual_seed(seed)
    model = build_model("plain", len(classes), base_channels=4)
    save_checkpoint(path, {
        "model": model.state_dict(),
        "model_args": model.model_args(),
        "classes": list(classes),
        "image_size": image_size,
        "params": Params().model_dump(mode="json"),
    })
    return path


class PixelwiseModel(nn.Module):
    """A 1x1 convolution: each pixel's logits depend on that pixel alone, so any tiling must agree."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.conv = nn.Conv2d(3, classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def random_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_predictor_rebuilds_the_model_from_the_checkpoint_alone(tmp_path):
    predictor = Predictor(tiny_checkpoint(tmp_path / "best.pt", image_size=32))
    image = random_image(20, 50)
    probs = predictor.predict_probs(image)
    assert predictor.classes == CLASSES and predictor.image_size == 32
    assert probs.shape == (2, 20, 50) and probs.dtype == torch.float32
    torch.testing.assert_close(probs.sum(0), torch.ones(20, 50))


def test_predict_probs_is_letterbox_model_softmax_restore(tmp_path):
    predictor = Predictor(tiny_checkpoint(tmp_path / "best.pt", image_size=32))
    image = random_image(20, 50)
    box = Letterbox.fit((20, 50), (32, 32))
    with torch.no_grad():
        logits = predictor.model(to_tensor(box.apply_image(image))[None])
    expected = box.restore(torch.softmax(logits, 1))[0]
    torch.testing.assert_close(predictor.predict_probs(image), expected)


def test_batch_matches_one_by_one_for_images_of_different_sizes(tmp_path):
    predictor = Predictor(tiny_checkpoint(tmp_path / "best.pt"))
    images = [random_image(20, 50, 1), random_image(32, 32, 2), random_image(41, 17, 3)]
    batched = predictor.predict_batch(images)
    for image, probs in zip(images, batched):
        assert probs.shape[1:] == image.shape[:2]
        torch.testing.assert_close(probs, predictor.predict_probs(image), atol=1e-5, rtol=0)


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(SegpipeError, match="checkpoint not found"):
        Predictor(tmp_path / "nope.pt")


def test_window_starts_cover_the_length_and_end_flush():
    assert window_starts(10, 4, 3) == [0, 3, 6]
    assert window_starts(11, 4, 3) == [0, 3, 6, 7]
    assert window_starts(4, 4, 3) == [0]
    assert window_starts(3, 4, 3) == [0]


@pytest.mark.parametrize("kind", ["gaussian", "spline"])
def test_weight_window_peaks_in_the_middle_and_stays_positive(kind):
    weight = weight_window(16, 8, kind)
    assert weight.shape == (16, 8)
    assert weight.min() > 0
    assert weight[8, 4] == pytest.approx(weight.max().item(), rel=0.05)
    assert weight[0, 0] < 0.05 * weight.max()
    torch.testing.assert_close(weight, weight.flip(0).flip(1))  # symmetric


@pytest.mark.parametrize("tile", [64, 100])
def test_one_tile_covering_the_image_equals_untiled_prediction(tmp_path, tile):
    predictor = Predictor(tiny_checkpoint(tmp_path / "best.pt", image_size=32))
    image = random_image(40, 64)
    tiled = predictor.predict_tiled(image, tile=tile, overlap=0.25)
    torch.testing.assert_close(tiled, predictor.predict_probs(image), atol=1e-5, rtol=0)
    assert np.array_equal(predictor.predict_tiled_labels(image, tile=tile), class_map(predictor.predict_probs(image)))


@pytest.mark.parametrize("window", ["gaussian", "spline"])
@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5])
def test_blending_many_tiles_of_a_pixelwise_model_reproduces_the_per_pixel_answer(window, overlap):
    # tile == image_size: windows are not resized, so every window predicts each pixel exactly as
    # the whole image does, and the blend is right only if the weights are normalised per pixel.
    predictor = Predictor.from_model(PixelwiseModel(), ["a", "b", "c"], image_size=16)
    image = random_image(53, 70, seed=4)
    with torch.no_grad():
        expected = torch.softmax(predictor.model(to_tensor(image)[None]), 1)[0]
    tiled = predictor.predict_tiled(image, tile=16, overlap=overlap, window=window, batch_size=3)
    torch.testing.assert_close(tiled, expected, atol=1e-5, rtol=0)


def test_bands_cover_every_row_once_and_stay_one_tile_high():
    predictor = Predictor.from_model(PixelwiseModel(), ["a", "b", "c"], image_size=16)
    bands = list(predictor.tiled_bands(random_image(75, 40), tile=16, overlap=0.5))
    tops = [top for top, _ in bands]
    heights = [band.shape[1] for _, band in bands]
    assert tops == sorted(tops) and tops[0] == 0
    assert [t + h for t, h in zip(tops, heights)][:-1] == tops[1:]
    assert tops[-1] + heights[-1] == 75 and max(heights) <= 16


def test_tiles_larger_than_image_size_are_resized_to_it():
    seen = []

    class Recorder(PixelwiseModel):
        def forward(self, x):
            seen.append(tuple(x.shape[-2:]))
            return super().forward(x)

    predictor = Predictor.from_model(Recorder(), ["a", "b", "c"], image_size=16)
    labels = predictor.predict_tiled_labels(random_image(70, 90), tile=32, overlap=0.25)
    assert labels.shape == (70, 90) and labels.dtype == np.uint8
    assert set(seen) == {(16, 16)}


def test_tta_of_a_pixelwise_model_changes_nothing():
    # A 1x1 convolution commutes with rotations and flips, so the 8-way average equals one pass.
    predictor = Predictor.from_model(PixelwiseModel(), ["a", "b", "c"], image_size=16)
    image = random_image(16, 16)
    torch.testing.assert_close(predictor.predict_probs(image, tta=True), predictor.predict_probs(image), atol=1e-6, rtol=0)
    tiled = predictor.predict_tiled(image, tile=16, tta=True)
    torch.testing.assert_close(tiled, predictor.predict_probs(image), atol=1e-5, rtol=0)


def test_tta_undoes_each_transform_before_averaging():
    # A model that marks the top-left canvas pixel: with TTA undone correctly, only that pixel is marked.
    class Corner(nn.Module):
        def forward(self, x):
            logits = torch.zeros((x.shape[0], 2, *x.shape[-2:]))
            logits[:, 1] = -10.0
            logits[:, 1, 0, 0] = 10.0
            return logits

    predictor = Predictor.from_model(Corner(), ["a", "b"], image_size=8)
    probs = predictor.predict_probs(random_image(8, 8), tta=True)
    # Each of the 8 views marks its own top-left, which maps back to the 4 corners: 2 views each.
    marked = probs[1] > 0.2
    assert marked.sum() == 4 and marked[0, 0] and marked[0, -1] and marked[-1, 0] and marked[-1, -1]
    assert probs[1, 0, 0] == pytest.approx(0.25, abs=1e-3)


def test_bad_tiling_arguments_are_errors():
    predictor = Predictor.from_model(PixelwiseModel(), ["a", "b", "c"], image_size=16)
    with pytest.raises(SegpipeError, match="overlap"):
        predictor.predict_tiled_labels(random_image(20, 20), tile=16, overlap=1.0)
    with pytest.raises(SegpipeError, match="window"):
        predictor.predict_tiled_labels(random_image(20, 20), tile=16, window="box")
