import itertools
import re
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from scipy import stats

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
    assert provenance.transforms.str.startswith("Rotate(angle=").all()
    angles = provenance.transforms.str.extract(r"angle=(-?[\d.]+)")[0].astype(float)
    assert (angles.abs() >= 5).sum() >= 4
    for new_id, angle in zip(provenance.id, angles):
        mask = read_class_mask(tmp_path / "aug" / "masks" / f"{new_id}.png")
        assert set(np.unique(mask)) <= {0, 1, 255}  # nearest-neighbour: no blended labels
        # A turn of a few degrees brings in a corner wider than a pixel of this 24 x 32 image.
        if abs(angle) >= 5 and mask[0, 0] != 255 and mask[-1, -1] != 255:
            pytest.fail(f"{new_id}: an image rotated by {angle} degrees should have ignore (255) corners")


def test_provenance_names_the_transforms_applied(dataset, tmp_path: Path):
    settings = {**NOTHING, "contrast_p": 1.0, "blur_p": 1.0, "vflip_p": 1.0}
    provenance = run(dataset, tmp_path / "aug", copies=1, **settings)
    for record in provenance.transforms:
        assert "VerticalFlip" in record and "Contrast(alpha=" in record and "GaussianBlur(sigma=" in record


# --- The draws: what params.yaml says, checked by their distribution over many samples. ---

DEFAULT_P = {"Rotate": 0.5, "HorizontalFlip": 0.5, "VerticalFlip": 0.5, "Contrast": 0.5, "GaussianBlur": 0.3}
PARAMETER = {  # transform -> (regex of its recorded parameter, configured range)
    "Rotate": (r"Rotate\(angle=(-?[\d.]+)\)", (-30.0, 30.0)),
    "Contrast": (r"Contrast\(alpha=([\d.]+)\)", (0.7, 1.3)),
    "GaussianBlur": (r"GaussianBlur\(sigma=([\d.]+)\)", (0.3, 1.5)),
}


@pytest.fixture(scope="module")
def many_draws(tmp_path_factory) -> pd.DataFrame:
    """Provenance of 40 training images x 32 copies = 1,280 samples with the default settings."""
    root = tmp_path_factory.mktemp("draws")
    processed = make_processed(root / "processed", count=50, size=(8, 8))
    write_split(processed, root / "splits", SplitSection(val_fraction=0.2), seed=0)
    augment_dataset(processed, root / "splits", root / "aug", AugmentSection(copies=32), seed=7, workers=1, progress=False)
    provenance = pd.read_csv(root / "aug" / "provenance.csv", keep_default_na=False)
    assert len(provenance) == 1280
    return provenance


def fired(provenance: pd.DataFrame) -> pd.DataFrame:
    """One boolean column per transform: did the sample's provenance list it."""
    names = [record.split("; ") if record else [] for record in provenance.transforms]
    return pd.DataFrame({t: [any(n.split("(")[0] == t for n in row) for row in names] for t in DEFAULT_P})


def test_each_transform_fires_with_its_own_probability(many_draws):
    counts = fired(many_draws).sum()
    for name, p in DEFAULT_P.items():
        test = stats.binomtest(int(counts[name]), len(many_draws), p)
        assert test.pvalue > 0.001, f"{name}: {counts[name]} of {len(many_draws)} fired, p = {p}"


def test_transforms_fire_independently_of_each_other(many_draws):
    table = fired(many_draws)
    for a, b in itertools.combinations(DEFAULT_P, 2):
        contingency = pd.crosstab(table[a], table[b]).reindex(index=[False, True], columns=[False, True], fill_value=0)
        _, pvalue, _, _ = stats.chi2_contingency(contingency.to_numpy(), correction=False)
        assert pvalue > 0.001, f"{a} and {b} are not independent:\n{contingency}"
    # "No transform at all" is the product of the five misses: 0.5^4 * 0.7 = 4.4%.
    nothing = int((~table.any(axis=1)).sum())
    assert stats.binomtest(nothing, len(table), 0.5**4 * 0.7).pvalue > 0.001, nothing


@pytest.mark.parametrize("name", sorted(PARAMETER))
def test_parameters_spread_uniformly_over_their_configured_range(many_draws, name):
    pattern, (low, high) = PARAMETER[name]
    values = many_draws.transforms.str.extract(pattern)[0].dropna().astype(float).to_numpy()
    assert len(values) > 200, f"{name}: only {len(values)} recorded values"
    width = high - low
    assert low - 1e-3 <= values.min() < low + 0.03 * width and high - 0.03 * width < values.max() <= high + 1e-3
    assert stats.kstest(values, stats.uniform(loc=low, scale=width).cdf).pvalue > 0.001


def test_provenance_lists_exactly_the_flips_and_contrast_each_sample_went_through(dataset, tmp_path: Path):
    settings = {**NOTHING, "hflip_p": 0.5, "vflip_p": 0.5, "contrast_p": 0.5}
    provenance = run(dataset, tmp_path / "aug", copies=12, **settings).fillna("")
    for row in provenance.itertuples():
        expected = read_image(dataset[0] / "images" / f"{row.source_id}.png").astype(float)
        mask = read_class_mask(dataset[0] / "masks" / f"{row.source_id}.png")
        if "HorizontalFlip" in row.transforms:
            expected, mask = expected[:, ::-1], mask[:, ::-1]
        if "VerticalFlip" in row.transforms:
            expected, mask = expected[::-1], mask[::-1]
        alpha = re.search(r"Contrast\(alpha=([\d.]+)\)", row.transforms)
        if alpha:
            expected = np.clip(expected * float(alpha.group(1)), 0, 255)
        image = read_image(tmp_path / "aug" / "images" / f"{row.id}.png")
        np.testing.assert_allclose(image, expected, atol=1.5, err_msg=f"{row.id}: {row.transforms}")
        np.testing.assert_array_equal(read_class_mask(tmp_path / "aug" / "masks" / f"{row.id}.png"), mask)
    assert provenance.transforms.str.contains("Flip").any() and (provenance.transforms == "").any()


def test_the_same_seed_draws_the_same_transforms_and_another_seed_others(dataset, tmp_path: Path):
    first = run(dataset, tmp_path / "a", copies=4)
    again = run(dataset, tmp_path / "b", copies=4)
    processed, splits = dataset
    augment_dataset(processed, splits, tmp_path / "c", AugmentSection(copies=4), seed=8, workers=1, progress=False)
    other = pd.read_csv(tmp_path / "c" / "provenance.csv")
    pd.testing.assert_frame_equal(first, again)
    assert (first.transforms.fillna("") != other.transforms.fillna("")).mean() > 0.5


def test_provenance_angle_is_the_rotation_applied(dataset, tmp_path: Path):
    provenance = run(dataset, tmp_path / "aug", copies=2, **{**NOTHING, "rotate_p": 1.0})
    for row in provenance.itertuples():
        angle = float(re.fullmatch(r"Rotate\(angle=(-?[\d.]+)\)", row.transforms).group(1))
        source = read_image(dataset[0] / "images" / f"{row.source_id}.png")
        h, w = source.shape[:2]
        # OpenCV's rotation about the pixel-grid centre, counter-clockwise for a positive angle.
        matrix = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), angle, 1.0)
        expected = cv2.warpAffine(source, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        image = read_image(tmp_path / "aug" / "images" / f"{row.id}.png")
        # The angle is recorded to 0.01 degrees: a pixel or two may round the other way.
        assert np.abs(image.astype(int) - expected).mean() < 1.0, (row.id, angle)
