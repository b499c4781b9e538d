"""Shared fixtures: tiny converted datasets made on the fly (no test depends on files outside tmp)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segpipe.imageio import write_mask

REPO = Path(__file__).resolve().parent.parent


def make_processed(root: Path, count: int = 6, size: tuple[int, int] = (24, 32), seed: int = 0) -> Path:
    """A converted dataset: images/<id>.png (random RGB), masks/<id>.png (a class-1 square), manifest.csv."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    h, w = size
    rows = ["id,source,width,height"]
    for index in range(count):
        image_id = f"img{index:03d}"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / "images" / f"{image_id}.png")
        mask = np.zeros((h, w), np.uint8)
        mask[h // 4 : h // 2, w // 4 : w // 2 + index % 3] = 1
        write_mask(root / "masks" / f"{image_id}.png", mask)
        rows.append(f"{image_id},{image_id}.json,{w},{h}")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture
def processed(tmp_path: Path) -> Path:
    return make_processed(tmp_path / "processed")
