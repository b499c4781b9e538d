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


def test_variants_score_each_clean_up_on_the_same_predictions_and_differences_are_paired(tmp_path: Path):
    from segpipe.evaluation.evaluate import load_pair, score_image
    from segpipe.inference.predictor import Predictor
    from segpipe.layout import samples_in
    from tests.helpers import make_processed, split_checkpoint

    make_processed(tmp_path / "data" / "processed", count=3)
    (tmp_path / "data" / "splits").mkdir(parents=True)
    (tmp_path / "data" / "splits" / "val.txt").write_text("img000\nimg001\nimg002\n")
    samples = samples_in(tmp_path / "data" / "processed", ["img000", "img001", "img002"])
    image, _ = load_pair(samples[0])
    checkpoint = split_checkpoint(tmp_path / "models" / "best.pt", image)
    summary = bench.score_variants(tmp_path, "tiny", "data/processed", "data/splits", 2.0)
    assert set(summary) == {f"{t}{p}" for t in ("", "tta+") for p in bench.POSTS}

    # Independently: the plain and the cleaned Jaccard of each image, by hand from the masks.
    predictor = Predictor.from_checkpoint(checkpoint)
    for name, post in (("plain", bench.POSTS["plain"]), ("largest_component", bench.POSTS["largest_component"])):
        values = []
        for sample in samples:
            image, mask = load_pair(sample)
            labels = post(predictor.class_maps([image])[0])
            truth, guess = mask == 1, labels == 1
            values.append((truth & guess).sum() / (truth | guess).sum())
            assert score_image(sample.id, mask, labels, predictor.classes, 2.0).field["lesion"].jaccard == pytest.approx(values[-1])
        assert summary[name]["jaccard"]["mean"] == pytest.approx(np.mean(values))
    assert summary["plain"]["jaccard"]["diff_vs_plain"] == 0.0
    difference = summary["largest_component"]["jaccard"]["mean"] - summary["plain"]["jaccard"]["mean"]
    assert summary["largest_component"]["jaccard"]["diff_vs_plain"] == pytest.approx(difference)
