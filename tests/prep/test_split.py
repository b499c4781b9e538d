from pathlib import Path

import pytest

from segpipe.config import SplitSection
from segpipe.errors import SegpipeError
from segpipe.layout import read_list
from segpipe.prep.split import split_ids, write_split

IDS = [f"img{i:04d}" for i in range(1000)]


def test_same_seed_and_data_give_the_same_lists():
    config = SplitSection()
    assert split_ids(IDS, config, seed=1) == split_ids(list(reversed(IDS)), config, seed=1)


def test_lists_partition_the_ids_about_nine_to_one():
    split = split_ids(IDS, SplitSection(val_fraction=0.1), seed=0)
    assert sorted(split.train + split.val) == sorted(IDS)
    assert not set(split.train) & set(split.val)
    assert 70 <= len(split.val) <= 130


def test_another_seed_gives_another_split():
    assert split_ids(IDS, SplitSection(), seed=0).val != split_ids(IDS, SplitSection(), seed=1).val


def test_adding_images_moves_no_existing_image():
    before = split_ids(IDS[:500], SplitSection(), seed=3)
    after = split_ids(IDS, SplitSection(), seed=3)
    assert set(before.val) <= set(after.val)
    assert set(before.train) <= set(after.train)


def test_k_fold_validates_every_image_exactly_once():
    folds = [split_ids(IDS, SplitSection(folds=5, fold=k), seed=0) for k in range(5)]
    all_val = [i for split in folds for i in split.val]
    assert sorted(all_val) == sorted(IDS)
    for split in folds:
        assert 150 <= len(split.val) <= 250


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
        write_split(tmp_path, tmp_path / "splits", SplitSection(), seed=0)
