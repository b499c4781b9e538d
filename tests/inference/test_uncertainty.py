"""Ranking images by mean pixel entropy, checked on a model whose probabilities are known."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from segpipe.data.spec import LetterboxInput, PatchInput
from segpipe.inference.predictor import Predictor
from segpipe.inference.uncertainty import mean_entropy, rank_folder, rank_scores


class RedLogit(nn.Module):
    """Logits (0, GAIN * x_red) per pixel: the lesion probability is sigmoid(GAIN * normalised red)."""

    GAIN = 2.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.zeros_like(x[:, :1]), self.GAIN * x[:, :1]], dim=1)


def hand_entropy(red: int) -> float:
    """Binary entropy, in nats, of sigmoid(GAIN * (red / 255 - 0.485) / 0.229) (ImageNet's red mean/std)."""
    p = 1 / (1 + math.exp(-RedLogit.GAIN * (red / 255 - 0.485) / 0.229))
    return -p * math.log(p) - (1 - p) * math.log(1 - p)


def test_mean_entropy_of_a_certain_and_an_even_pixel_is_half_ln_2():
    probs = torch.tensor([[[1.0, 0.5]], [[0.0, 0.5]]])  # (C=2, H=1, W=2)
    assert mean_entropy(probs) == pytest.approx(math.log(2) / 2, abs=1e-7)


def test_uniform_over_four_classes_is_ln_4():
    assert mean_entropy(torch.full((4, 3, 5), 0.25)) == pytest.approx(math.log(4), abs=1e-6)


REDS = {"a": 250, "b": 124, "c": 10, "d": 140, "e": 60}  # 124 is near the mean: most uncertain


def uniform_images(folder, size) -> list:
    paths = []
    for name, red in REDS.items():
        image = np.zeros((*size, 3), np.uint8)
        image[..., 0] = red
        Image.fromarray(image).save(folder / f"{name}.png")
        paths.append(folder / f"{name}.png")
    return paths


def test_images_are_ranked_by_the_hand_computed_entropy_of_their_probabilities(tmp_path):
    reds, paths = REDS, uniform_images(tmp_path, (24, 32))
    # 24 x 32 into a 32 canvas: no resizing, only padding, which the restored probabilities drop.
    predictor = Predictor(RedLogit(), ["background", "lesion"], LetterboxInput(32))
    ranking = rank_folder(predictor, paths, batch_size=2, progress=False)
    expected = sorted(reds, key=lambda name: -hand_entropy(reds[name]))
    assert [row.image.stem for row in ranking] == expected == ["b", "d", "e", "c", "a"]
    assert [row.rank for row in ranking] == [1, 2, 3, 4, 5]
    for row in ranking:
        assert row.score == pytest.approx(hand_entropy(reds[row.image.stem]), abs=1e-5)


def test_a_patch_model_is_scored_on_its_own_blended_windows(tmp_path):
    # 40 x 52 images in 16 px windows: many blended windows, each uniform, so the hand value holds.
    paths = uniform_images(tmp_path, (40, 52))
    predictor = Predictor(RedLogit(), ["background", "lesion"], PatchInput(16, 1.0))
    assert predictor.tiling is not None
    ranking = rank_folder(predictor, paths, progress=False)
    assert [row.image.stem for row in ranking] == ["b", "d", "e", "c", "a"]
    for row in ranking:
        assert row.score == pytest.approx(hand_entropy(REDS[row.image.stem]), abs=1e-5)


def test_equal_scores_keep_file_name_order(tmp_path):
    ranking = rank_scores([(tmp_path / "z.png", 0.5), (tmp_path / "a.png", 0.5), (tmp_path / "m.png", 0.9)])
    assert [(row.image.name, row.rank) for row in ranking] == [("m.png", 1), ("a.png", 2), ("z.png", 3)]
