"""benchmarks/bench_accuracy.py's own logic: the tile hold-out split and the mean's interval."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import REPO

spec = importlib.util.spec_from_file_location("bench_accuracy", REPO / "benchmarks" / "bench_accuracy.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def test_tile_split_holds_out_every_image_of_the_chosen_tiles(tmp_path: Path):
    processed = tmp_path / "processed"
    processed.mkdir()
    ids = ["Tile1_image_part_001", "Tile1_image_part_002", "Tile8_image_part_001", "Tile10_image_part_001"]
    (processed / "manifest.csv").write_text("id,source,width,height\n" + "".join(f"{i},{i}.jpg,4,4\n" for i in ids))
    assert bench.tile_split(processed, tmp_path / "splits", {1}) == (2, 2)
    assert (tmp_path / "splits" / "val.txt").read_text().split() == ids[:2]
    assert (tmp_path / "splits" / "train.txt").read_text().split() == ids[2:]  # Tile10 is not Tile1
    with pytest.raises(SystemExit, match="no image of tiles"):
        bench.tile_split(processed, tmp_path / "other", {3})


def test_mean_ci_is_the_mean_and_brackets_it_leaving_out_undefined_values():
    mean, low, high = bench.mean_ci(np.array([0.5, 0.5, np.nan, 0.5]))
    assert (mean, low, high) == pytest.approx((0.5, 0.5, 0.5))
    values = np.random.default_rng(0).uniform(0, 1, 400)
    mean, low, high = bench.mean_ci(values)
    # The bootstrap interval of a mean of 400 uniforms: about +-1.96 * 0.289 / 20 = +-0.028.
    assert mean == pytest.approx(values.mean()) and low < mean < high
    assert high - low == pytest.approx(2 * 1.96 * values.std() / 20, rel=0.15)


def test_command_line_settings_become_a_second_preset(tmp_path: Path):
    (tmp_path / "images").mkdir()
    args = bench.parse_args(["dubai", "--recipe", "params-dubai.yaml", "--dubai", str(tmp_path), "--epochs", "3", "--device", "cpu"])
    assert bench.overrides(args) == {"train": {"epochs": 3, "device": "cpu"}, "evaluate": {"device": "cpu"}}
