"""Offline augmentation of the training images (the first paper's transforms, after the split).

The paper augmented before splitting, so copies of validation images leaked into training; here
only ids in `train.txt` are read. Each new sample is drawn with a seed made from the base seed, the
source id and the copy number, so the output does not depend on order, worker count or which
other images exist.
"""

from __future__ import annotations

import csv
import functools
import math
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


def build_transform(config: AugmentSection, seed: int) -> A.Compose:
    """The albumentations pipeline from `augment.*`: rotation, flips, contrast, Gaussian blur.

    Masks are resampled nearest-neighbour, and corners rotated in from outside the image are
    IGNORE_INDEX in the mask (black in the image), so the loss never learns from invented pixels.
    """
    transforms = [
        A.Rotate(
            limit=config.rotate_limit,
            p=config.rotate_p,
            interpolation=cv2.INTER_LINEAR,
            mask_interpolation=cv2.INTER_NEAREST,
            border_mode=cv2.BORDER_CONSTANT,
            fill=0,
            fill_mask=IGNORE_INDEX,
        ),
        A.HorizontalFlip(p=config.hflip_p),
        A.VerticalFlip(p=config.vflip_p),
        A.RandomBrightnessContrast(brightness_limit=0.0, contrast_limit=config.contrast_limit, p=config.contrast_p),
        # blur_limit=0: the kernel size follows from the drawn sigma.
        A.GaussianBlur(blur_limit=0, sigma_limit=config.blur_sigma, p=config.blur_p),
    ]
    return A.Compose(transforms, seed=seed, save_applied_params=True)


def describe_applied(applied: list[tuple[str, dict]]) -> str:
    """A short, readable record of the transforms one sample went through."""
    parts = []
    for name, params in applied:
        if name == "Rotate":
            matrix = params["matrix"]
            parts.append(f"Rotate(angle={math.degrees(math.atan2(matrix[0][1], matrix[0][0])):.1f})")
        elif name == "RandomBrightnessContrast":
            parts.append(f"Contrast(alpha={params['alpha']:.3f})")
        elif name == "GaussianBlur":
            parts.append(f"GaussianBlur(ksize={len(params['kernel'])})")
        else:
            parts.append(name)
    return "; ".join(parts)


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
        transform = build_transform(config, sample_seed(seed, job.image_id, copy))
        result = transform(image=image, mask=mask)
        new_id = f"{job.image_id}_aug{copy}"
        suffix = ".jpg" if jpeg else ".png"
        _save_rgb(out / IMAGES / f"{new_id}{suffix}", result["image"])
        write_mask(mask_path(out, new_id), result["mask"])
        rows.append({"id": new_id, "source_id": job.image_id, "transforms": describe_applied(result["applied_transforms"])})
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
