"""Tiled prediction: window placement, blending weights, and blended tiles equal to the whole."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from segpipe.data.letterbox import to_tensor
from segpipe.errors import SegpipeError
from segpipe.data.spec import LetterboxInput
from segpipe.inference.predictor import Predictor, class_map
from segpipe.data.tiling import Tiling, predict_tiled, tiled_bands, weight_window, window_starts
from tests.helpers import PixelwiseModel, random_image, tiny_checkpoint

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
    predictor = Predictor.from_checkpoint(tiny_checkpoint(tmp_path / "best.pt", image_size=32))
    image = random_image(40, 64)
    tiled = predict_tiled(predictor.predict_batch, image, Tiling(tile, 0.25), keep_probs=True)[1]
    torch.testing.assert_close(tiled, predictor.predict_probs(image), atol=1e-5, rtol=0)
    assert np.array_equal(predict_tiled(predictor.predict_batch, image, Tiling(tile))[0], class_map(predictor.predict_probs(image)))

@pytest.mark.parametrize("window", ["gaussian", "spline"])
@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5])
def test_blending_many_tiles_of_a_pixelwise_model_reproduces_the_per_pixel_answer(window, overlap):
    # tile == image_size: windows are not resized, so every window predicts each pixel exactly as
    # the whole image does, and the blend is right only if the weights are normalised per pixel.
    predictor = Predictor(PixelwiseModel(), ["a", "b", "c"], LetterboxInput(16))
    image = random_image(53, 70, seed=4)
    with torch.no_grad():
        expected = torch.softmax(predictor.model(to_tensor(image)[None]), 1)[0]
    tiled = predict_tiled(predictor.predict_batch, image, Tiling(16, overlap, window, batch_size=3), keep_probs=True)[1]
    torch.testing.assert_close(tiled, expected, atol=1e-5, rtol=0)

def test_bands_cover_every_row_once_and_stay_one_tile_high():
    predictor = Predictor(PixelwiseModel(), ["a", "b", "c"], LetterboxInput(16))
    bands = list(tiled_bands(predictor.predict_batch, random_image(75, 40), Tiling(16, 0.5)))
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

    predictor = Predictor(Recorder(), ["a", "b", "c"], LetterboxInput(16))
    labels = predict_tiled(predictor.predict_batch, random_image(70, 90), Tiling(32, 0.25))[0]
    assert labels.shape == (70, 90) and labels.dtype == np.uint8
    assert set(seen) == {(16, 16)}

def test_bad_tiling_arguments_are_errors():
    with pytest.raises(SegpipeError, match="overlap"):
        Tiling(16, overlap=1.0)
    with pytest.raises(SegpipeError, match="window"):
        Tiling(16, window="box")
