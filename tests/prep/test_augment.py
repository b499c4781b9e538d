from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from segpipe.prep.augment import augment_dataset
from segpipe.config import AugmentSection, SplitSection
from segpipe.imageio import read_class_mask, read_image
from segpipe.prep.split import write_split
from tests.helpers import make_processed

# Every transform off; tests switch on the one they check.
NOTHING = dict(rotate_p=0.0, hflip_p=0.0, vflip_p=0.0, contrast_p=0.0, blur_p=0.0)


@pytest.fixture
def dataset(tmp_path: Path) -> tuple[Path, Path]:
    processed = make_processed(tmp_path / "processed", count=8)
    splits = tmp_path / "splits"
    write_split(processed, splits, SplitSection(val_fraction=0.25), seed=0)
    return processed, splits


def run(dataset, out: Path, workers: int = 1, **settings) -> pd.DataFrame:
    processed, splits = dataset
    augment_dataset(processed, splits, out, AugmentSection(**settings), seed=7, workers=workers, progress=False)
    return pd.read_csv(out / "provenance.csv")


def test_only_training_images_are_augmented(dataset, tmp_path: Path):
    provenance = run(dataset, tmp_path / "aug", copies=3)
    train = (dataset[1] / "train.txt").read_text().split()
    val = (dataset[1] / "val.txt").read_text().split()
    assert sorted(set(provenance.source_id)) == sorted(train)
    assert not set(provenance.source_id) & set(val)
    assert len(provenance) == 3 * len(train)
    for new_id in provenance.id:
        assert (tmp_path / "aug" / "images" / f"{new_id}.png").exists()
        assert (tmp_path / "aug" / "masks" / f"{new_id}.png").exists()


def test_disabled_writes_an_empty_set(dataset, tmp_path: Path):
    provenance = run(dataset, tmp_path / "aug", enabled=False)
    assert provenance.empty
    assert list((tmp_path / "aug" / "images").iterdir()) == []


def test_same_seed_gives_identical_files_whatever_the_worker_count(dataset, tmp_path: Path):
    run(dataset, tmp_path / "a", workers=1, copies=3)
    run(dataset, tmp_path / "b", workers=2, copies=3)
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.png"))
    files_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*.png"))
    assert files_a == files_b
    for rel in files_a:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()


def test_horizontal_flip_mirrors_image_and_mask_exactly(dataset, tmp_path: Path):
    run(dataset, tmp_path / "aug", copies=1, **{**NOTHING, "hflip_p": 1.0})
    source = dataset[0]
    train = (dataset[1] / "train.txt").read_text().split()
    image_id = train[0]
    image = read_image(tmp_path / "aug" / "images" / f"{image_id}_aug0.png")
    mask = read_class_mask(tmp_path / "aug" / "masks" / f"{image_id}_aug0.png")
    np.testing.assert_array_equal(image, read_image(source / "images" / f"{image_id}.png")[:, ::-1])
    np.testing.assert_array_equal(mask, read_class_mask(source / "masks" / f"{image_id}.png")[:, ::-1])


def test_rotation_marks_rotated_in_corners_ignore_and_keeps_labels_nearest(dataset, tmp_path: Path):
    provenance = run(dataset, tmp_path / "aug", copies=2, **{**NOTHING, "rotate_p": 1.0, "rotate_limit": 45})
    for new_id in provenance.id:
        mask = read_class_mask(tmp_path / "aug" / "masks" / f"{new_id}.png")
        assert set(np.unique(mask)) <= {0, 1, 255}  # nearest-neighbour: no blended labels
        if mask[0, 0] != 255 and mask[-1, -1] != 255:
            pytest.fail(f"{new_id}: a rotated image should have ignore (255) corners")
    assert provenance.transforms.str.startswith("Rotate(angle=").all()


def test_provenance_names_the_transforms_applied(dataset, tmp_path: Path):
    settings = {**NOTHING, "contrast_p": 1.0, "blur_p": 1.0, "vflip_p": 1.0}
    provenance = run(dataset, tmp_path / "aug", copies=1, **settings)
    for record in provenance.transforms:
        assert "VerticalFlip" in record and "Contrast(alpha=" in record and "GaussianBlur(ksize=" in record
