"""Overlays for people: the error colours of evaluate's gallery."""

from __future__ import annotations

import numpy as np

from segpipe.palette import ERROR_ALPHA, ERROR_COLOURS, error_overlay


def test_error_overlay_colours_each_kind_of_error_apart_and_leaves_the_rest_gray():
    image = np.full((1, 6, 3), 100, np.uint8)
    image[0, 0] = (200, 100, 0)  # a coloured pixel becomes its gray, (200 + 100 + 0) / 3
    truth = np.array([[0, 0, 1, 1, 2, 255]])
    prediction = np.array([[0, 1, 0, 1, 1, 2]])
    out = error_overlay(image, truth, prediction)

    def blended(name: str) -> list[int]:
        return list(np.round((1 - ERROR_ALPHA) * 100 + ERROR_ALPHA * np.array(ERROR_COLOURS[name])).astype(int))

    assert out[0, 0].tolist() == [100, 100, 100]  # correct background: gray
    assert out[0, 1].tolist() == blended("false positive")  # lesion predicted on background
    assert out[0, 2].tolist() == blended("false negative")  # lesion missed
    assert out[0, 3].tolist() == [100, 100, 100]  # correct lesion: gray
    assert out[0, 4].tolist() == blended("wrong class")  # class 2 given class 1
    assert out[0, 5].tolist() == [100, 100, 100]  # ignored (255) truth is never an error
    assert len({tuple(c) for c in ERROR_COLOURS.values()}) == 3
