from pathlib import Path

import pytest

from segpipe.config import SplitSection
from segpipe.errors import SegpipeError
from segpipe.layout import read_list
from segpipe.prep.split import Split, describe, split_ids, write_split

IDS = [f"img{i:04d}" for i in range(1000)]


def test_same_seed_and_data_give_the_same_lists():
    config = SplitSection()
    assert split_ids(IDS, config, seed=1) == split_ids(list(reversed(IDS)), config, seed=1)


def test_lists_partition_the_ids_nine_to_one_exactly():
    split = split_ids(IDS, SplitSection(val_fraction=0.1), seed=0)
    assert sorted(split.train + split.val) == sorted(IDS)
    assert not set(split.train) & set(split.val)
    assert len(split.val) == 100


@pytest.mark.parametrize(
    ("n", "fraction", "val"),
    [(98, 0.1, 10), (100, 0.1, 10), (95, 0.1, 10), (94, 0.1, 9), (25, 0.1, 3), (2, 0.1, 1), (3, 0.9, 2), (7, 0.5, 4)],
)
def test_validation_count_is_n_times_the_fraction_rounded_half_up(n, fraction, val):
    # At least one image on each side: 2 images at 0.1 still validate on one, 3 at 0.9 train on one.
    split = split_ids(IDS[:n], SplitSection(val_fraction=fraction), seed=5)
    assert len(split.val) == val and len(split.train) == n - val


def test_another_seed_gives_another_split():
    assert split_ids(IDS, SplitSection(), seed=0).val != split_ids(IDS, SplitSection(), seed=1).val


def moved(before: Split, after: Split) -> int:
    """How many ids of `before` are on the other side in `after`."""
    return len(set(before.val) & set(after.train)) + len(set(before.train) & set(after.val))


def test_adding_one_image_moves_at_most_one_existing_image():
    for count in range(20, 120):
        before = split_ids(IDS[:count], SplitSection(), seed=3)
        after = split_ids(IDS[: count + 1], SplitSection(), seed=3)
        assert moved(before, after) <= 1, count


def test_adding_many_images_moves_only_ids_past_the_boundary():
    # Doubling the data: val doubles too, so old val ids stay (the new boundary lies further out)
    # and only old train ids that now rank among the lowest 10% move.
    before = split_ids(IDS[:500], SplitSection(), seed=3)
    after = split_ids(IDS, SplitSection(), seed=3)
    assert set(before.val) <= set(after.val)
    assert moved(before, after) <= len(after.val) - len(before.val)


def test_k_fold_validates_every_image_exactly_once_in_folds_of_equal_size():
    for count in (1000, 997, 12):
        folds = [split_ids(IDS[:count], SplitSection(folds=5, fold=k), seed=0) for k in range(5)]
        all_val = [i for split in folds for i in split.val]
        assert sorted(all_val) == sorted(IDS[:count])
        sizes = [len(split.val) for split in folds]
        assert max(sizes) - min(sizes) <= 1, sizes


def test_k_fold_with_more_folds_than_images_is_refused():
    with pytest.raises(SegpipeError, match="split.folds is 5 but there are only 3 images"):
        split_ids(IDS[:3], SplitSection(folds=5, fold=0), seed=0)


def test_split_report_gives_the_realised_fraction():
    split = split_ids(IDS[:98], SplitSection(val_fraction=0.1), seed=0)
    assert describe(split, SplitSection(val_fraction=0.1)) == "88 train, 10 val (10.2% of 98; val_fraction 0.1)"


def test_tiny_dataset_keeps_both_lists_non_empty():
    for seed in range(20):
        split = split_ids(["a", "b"], SplitSection(val_fraction=0.1), seed=seed)
        assert len(split.train) == 1 and len(split.val) == 1


def test_write_split_writes_voc_style_lists(processed: Path, tmp_path: Path):
    split = write_split(processed, tmp_path / "splits", SplitSection(val_fraction=0.3), seed=0)
    assert read_list(tmp_path / "splits" / "train.txt") == split.train
    assert read_list(tmp_path / "splits" / "val.txt") == split.val
    assert len(split.train) + len(split.val) == 6


def test_missing_manifest_is_reported(tmp_path: Path):
    with pytest.raises(SegpipeError, match="manifest.csv: not found"):
        write_split(tmp_path / "processed", tmp_path / "splits", SplitSection(), seed=0)
