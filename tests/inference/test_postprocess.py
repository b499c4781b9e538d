"""Clean-up of predicted masks: largest component and hole filling, on masks drawn by hand and
against scipy's binary hole filling; predict and evaluate apply the same clean-up."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from segpipe.evaluation.evaluate import scored_labels
from segpipe.inference.postprocess import PostProcess, fill_holes, keep_largest_component
from segpipe.inference.prediction import PredictOptions, predict_paths
from segpipe.inference.predictor import Predictor
from segpipe.layout import Sample
from segpipe.palette import mask_png
from tests.inference.test_every_consumer_agrees import SIZES, trained  # noqa: F401 (a fixture)


def grid(rows: str) -> np.ndarray:
    """A class map from lines of digits, e.g. '0110'."""
    return np.array([[int(ch) for ch in line] for line in rows.split()], dtype=np.uint8)


def test_largest_component_keeps_each_class_largest_region_and_counts_diagonal_neighbours():
    labels = grid("""
        110000
        110011
        001000
        000022
        200022
    """)
    # Class 1: the 2x2 block and its diagonal neighbour at (2, 2) are one region of 5; the pair at
    # the right (2 pixels) goes. Class 2: the 2x2 block stays, the single pixel goes.
    expected = grid("""
        110000
        110000
        001000
        000022
        000022
    """)
    assert np.array_equal(keep_largest_component(labels), expected)


def test_largest_component_leaves_a_single_region_and_an_empty_mask_alone():
    single = grid("0110 0110 0000")
    empty = np.zeros((3, 4), np.uint8)
    assert np.array_equal(keep_largest_component(single), single)
    assert np.array_equal(keep_largest_component(empty), empty)


def test_fill_holes_fills_enclosed_background_only():
    labels = grid("""
        0000000
        0111110
        0100010
        0100010
        0111110
        0000000
        0222000
        0202000
        0222000
    """)
    # Both holes take the class around them; the outside stays 0.
    expected = grid("""
        0000000
        0111110
        0111110
        0111110
        0111110
        0000000
        0222000
        0222000
        0222000
    """)
    assert np.array_equal(fill_holes(labels), expected)


def test_fill_holes_leaves_a_gap_open_to_the_border_and_a_hole_bordered_by_two_classes():
    open_ring = grid("""
        11111
        10001
        10001
        11001
    """)
    two_classes = grid("""
        11122
        10022
        11122
    """)
    island = grid("""
        1111111
        1000001
        1002001
        1111111
    """)
    for labels in (open_ring, two_classes, island):
        assert np.array_equal(fill_holes(labels), labels)


def test_an_outline_closed_diagonally_still_encloses_its_hole():
    labels = grid("""
        00100
        01010
        00100
    """)
    assert fill_holes(labels)[1, 2] == 1


@pytest.mark.parametrize("seed", range(20))
def test_fill_holes_of_a_binary_mask_is_scipys_binary_fill_holes(seed):
    """An independent computation: for two classes the rule is scipy.ndimage.binary_fill_holes."""
    rng = np.random.default_rng(seed)
    labels = (ndimage.uniform_filter(rng.random((40, 50)), 5) > 0.5).astype(np.uint8)
    expected = ndimage.binary_fill_holes(labels == 1).astype(np.uint8)
    assert np.array_equal(fill_holes(labels), expected)


def test_post_process_applies_what_is_asked_and_nothing_by_default():
    labels = grid("""
        1110011
        1010000
        1110000
    """)
    assert PostProcess()(labels) is labels
    assert np.array_equal(PostProcess(largest_component=True)(labels), grid("1110000 1010000 1110000"))
    assert np.array_equal(PostProcess(fill_holes=True)(labels), grid("1110011 1110000 1110000"))
    assert np.array_equal(PostProcess(True, True)(labels), grid("1110000 1110000 1110000"))
    assert PostProcess(True, True).describe() == "largest_component + fill_holes"


@pytest.mark.parametrize("tta", [False, True])
def test_predict_writes_and_evaluate_scores_the_same_cleaned_mask(trained, tmp_path, tta):  # noqa: F811
    root, checkpoint = trained
    post = PostProcess(largest_component=True, fill_holes=True)
    plain = predict_paths(checkpoint, [str(root / "in")], tmp_path / "plain", PredictOptions(tta=tta), progress=False)
    cleaned = predict_paths(
        checkpoint, [str(root / "in")], tmp_path / "cleaned", PredictOptions(tta=tta, post=post), progress=False
    )
    assert plain.ok and cleaned.ok
    samples = [Sample(name, root / "in" / f"{name}.png", root / "masks" / f"{name}.png") for name in SIZES]
    predictor = Predictor.from_checkpoint(checkpoint)
    scored = {s.id: labels for s, _, labels in scored_labels(predictor, samples, 4, tta=tta, post=post)}
    changed = 0
    for name in SIZES:
        before = np.asarray(Image.open(tmp_path / "plain" / f"{name}.png")) // 255
        after = (tmp_path / "cleaned" / f"{name}.png").read_bytes()
        assert after == mask_png(post(before.astype(np.uint8)), 2), f"{name}: predict did not clean its own mask"
        assert mask_png(scored[name], 2) == after, f"{name}: evaluate scored another mask than predict writes"
        changed += not np.array_equal(post(before.astype(np.uint8)), before)
    assert changed, "the clean-up changed no mask: the test would pass without it"
