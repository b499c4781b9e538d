"""`predict` on images deeper than 8 bits: a 16-bit gray PNG gets the mask of its 8-bit equivalent."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from segpipe.inference.prediction import PredictOptions, predict_paths
from tests.helpers import tiny_checkpoint


def test_a_16_bit_gray_png_is_predicted_as_its_8_bit_equivalent(tmp_path: Path):
    gray = np.random.default_rng(0).integers(0, 256, (40, 56), dtype=np.uint8)
    (tmp_path / "wide").mkdir()
    (tmp_path / "narrow").mkdir()
    Image.fromarray(gray.astype(np.uint16) * 257).save(tmp_path / "wide" / "scan.png")  # v * 257 / 257 = v exactly
    Image.fromarray(np.stack([gray] * 3, axis=-1)).save(tmp_path / "narrow" / "scan.png")
    checkpoint = tiny_checkpoint(tmp_path / "best.pt")
    for folder in ("wide", "narrow"):
        predict_paths(checkpoint, [str(tmp_path / folder)], tmp_path / f"out_{folder}", PredictOptions(probs=True), progress=False)
    wide, narrow = (np.load(tmp_path / f"out_{folder}" / "scan_probs.npy") for folder in ("wide", "narrow"))
    np.testing.assert_array_equal(wide, narrow)
