"""Offline augmentation of the training images (the first paper's transforms, after the split).

The paper augmented before splitting, so copies of validation images leaked into training; here
only ids in `train.txt` are read. Each new sample is drawn with a seed made from the base seed, the
source id and the copy number, so the output does not depend on order, worker count or which
other images exist.
"""

from __future__ import annotations

import csv
import functools
from dataclasses import dataclass
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
from PIL import Image

from segpipe.config import AugmentSection
from segpipe.imageio import IGNORE_INDEX, atomic_dir, check_apart, read_class_mask, read_image, write_mask
from segpipe.layout import IMAGES, MASKS, TRAIN_LIST, find_image, mask_path, read_list
from segpipe.prep.parallel import map_files, raise_failures
from segpipe.prep.split import id_position

PROVENANCE = "provenance.csv"


@dataclass(frozen=True)
class Applied:
    """One transform a sample went through, with the value drawn for it (None for a flip)."""

    name: str
    value: float | None = None

    def describe(self) -> str:
        """As provenance.csv records it, e.g. `Rotate(angle=-12.41)` or `HorizontalFlip`."""
        labels = {"Rotate": ("angle", 2), "Contrast": ("alpha", 4), "GaussianBlur": ("sigma", 4)}
        if self.name not in labels:
            return self.name
        key, digits = labels[self.name]
        return f"{self.name}({key}={self.value:.{digits}f})"


def draw_transforms(config: AugmentSection, seed: int) -> list[Applied]:
    """The transforms of one sample and their parameters, drawn from `augment.*` by `seed`.

    One numpy Generator per sample decides everything here: each transform fires on its own
    uniform draw (so with its own `p`, independently of the others) and takes a second draw for
    its parameter whether or not it fires, so changing one `p` leaves the other transforms' draws
    alone. (Seeding a fresh `A.Compose` per sample made every transform's first draw the same
    number, so they fired all together or not at all.)
    """
    u = np.random.default_rng(seed).random((5, 2))  # rows: rotate, hflip, vflip, contrast, blur
    low, high = config.blur_sigma
    candidates = [
        (config.rotate_p, Applied("Rotate", config.rotate_limit * (2 * u[0, 1] - 1))),
        (config.hflip_p, Applied("HorizontalFlip")),
        (config.vflip_p, Applied("VerticalFlip")),
        (config.contrast_p, Applied("Contrast", 1 + config.contrast_limit * (2 * u[3, 1] - 1))),
        (config.blur_p, Applied("GaussianBlur", low + (high - low) * u[4, 1])),
    ]
    return [applied for (p, applied), draw in zip(candidates, u[:, 0]) if draw < p]


def build_transform(applied: list[Applied]) -> A.Compose:
    """The albumentations pipeline that applies exactly `applied`, each with its drawn value.

    Masks are resampled nearest-neighbour, and corners rotated in from outside the image are
    IGNORE_INDEX in the mask (black in the image), so the loss never learns from invented pixels.
    Every range is a single value, so albumentations draws nothing.
    """
    return A.Compose([_albumentation(item) for item in applied])


def _albumentation(item: Applied) -> A.BasicTransform:
    value = item.value
    if item.name == "Rotate":
        return A.Rotate(
            limit=(value, value),
            p=1.0,
            interpolation=cv2.INTER_LINEAR,
            mask_interpolation=cv2.INTER_NEAREST,
            border_mode=cv2.BORDER_CONSTANT,
            fill=0,
            fill_mask=IGNORE_INDEX,
        )
    if item.name == "HorizontalFlip":
        return A.HorizontalFlip(p=1.0)
    if item.name == "VerticalFlip":
        return A.VerticalFlip(p=1.0)
    if item.name == "Contrast":
        return A.RandomBrightnessContrast(brightness_limit=(0.0, 0.0), contrast_limit=(value - 1, value - 1), p=1.0)
    # blur_limit=0: the kernel size follows from the sigma.
    return A.GaussianBlur(blur_limit=0, sigma_limit=(value, value), p=1.0)


def describe_applied(applied: list[Applied]) -> str:
    """A short, readable record of the transforms one sample went through ("" for none)."""
    return "; ".join(item.describe() for item in applied)


def sample_seed(seed: int, image_id: str, copy: int) -> int:
    return int(id_position(f"{image_id}#{copy}", seed) * 2**31)


@dataclass(frozen=True)
class _Job:
    image_id: str
    image_path: Path
    mask_path: Path


def _augment_one(job: _Job, *, config: AugmentSection, seed: int, out: Path) -> list[dict[str, str]]:
    image = read_image(job.image_path)
    mask = read_class_mask(job.mask_path)
    jpeg = job.image_path.suffix.lower() in (".jpg", ".jpeg")
    rows = []
    for copy in range(config.copies):
        applied = draw_transforms(config, sample_seed(seed, job.image_id, copy))
        result = build_transform(applied)(image=image, mask=mask)
        new_id = f"{job.image_id}_aug{copy}"
        suffix = ".jpg" if jpeg else ".png"
        _save_rgb(out / IMAGES / f"{new_id}{suffix}", result["image"])
        write_mask(mask_path(out, new_id), result["mask"])
        rows.append({"id": new_id, "source_id": job.image_id, "transforms": describe_applied(applied)})
    return rows


def _save_rgb(path: Path, image: np.ndarray) -> None:
    # JPEG sources stay JPEG (quality 95) so the augmented set is not several times the original's size.
    if path.suffix == ".jpg":
        Image.fromarray(image).save(path, quality=95)
    else:
        Image.fromarray(image).save(path, compress_level=1)


def augment_dataset(
    processed_dir: Path,
    splits_dir: Path,
    out_dir: Path,
    config: AugmentSection,
    *,
    seed: int,
    workers: int = 0,
    progress: bool = True,
) -> int:
    """Write `config.copies` augmented samples of every training image into out_dir; return their count.

    Writes out_dir/images, out_dir/masks and out_dir/provenance.csv (id, source_id, transforms).
    With `config.enabled` false the folders are written empty, so later stages need no special case.
    """
    processed_dir = Path(processed_dir)
    check_apart({"OUT_DIR": Path(out_dir)}, {"PROCESSED_DIR": processed_dir, "SPLITS_DIR": Path(splits_dir)})
    train_ids = read_list(Path(splits_dir) / TRAIN_LIST)
    jobs = [
        _Job(i, find_image(processed_dir, i), mask_path(processed_dir, i)) for i in train_ids
    ]
    with atomic_dir(Path(out_dir), owned=(IMAGES, MASKS, PROVENANCE)) as tmp:
        (tmp / IMAGES).mkdir()
        (tmp / MASKS).mkdir()
        rows: list[dict[str, str]] = []
        if config.enabled and config.copies:
            work = functools.partial(_augment_one, config=config, seed=seed, out=tmp)
            outcomes = map_files(work, jobs, workers=workers, progress=progress, desc="augment")
            for item_rows in raise_failures(outcomes):
                rows += item_rows
        with open(tmp / PROVENANCE, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=["id", "source_id", "transforms"])
            writer.writeheader()
            writer.writerows(rows)
    return len(rows)
