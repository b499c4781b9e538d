"""The dataset folder layout, known here and nowhere else.

A converted (or augmented) dataset is a folder with `images/<id>.<ext>`, `masks/<id>.png` (one
byte per pixel: class id, 255 = ignore) and, after convert, `manifest.csv`. A split folder holds
`train.txt` and `val.txt`, one id per line (as Pascal VOC ImageSets). The stages that write these
folders and the ones that read them all go through the names below.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from segpipe.errors import SegpipeError
from segpipe.imageio import IMAGE_SUFFIXES

IMAGES = "images"
MASKS = "masks"
MANIFEST = "manifest.csv"
TRAIN_LIST = "train.txt"
VAL_LIST = "val.txt"


@dataclass(frozen=True)
class Sample:
    id: str
    image: Path
    mask: Path


def mask_path(root: Path, image_id: str) -> Path:
    return Path(root) / MASKS / f"{image_id}.png"


def find_image(root: Path, image_id: str) -> Path:
    """The image file of `image_id` in a dataset folder's images/, whatever its suffix."""
    folder = Path(root) / IMAGES
    for suffix in IMAGE_SUFFIXES:
        path = folder / f"{image_id}{suffix}"
        if path.exists():
            return path
    raise SegpipeError(f"{folder}: no image for id {image_id!r} (looked for {image_id}.jpg/.png/...)")


def samples_in(root: Path, ids: Sequence[str]) -> list[Sample]:
    """Samples of a converted (or augmented) dataset folder."""
    return [Sample(i, find_image(root, i), mask_path(root, i)) for i in ids]


def read_list(path: Path) -> list[str]:
    """Read a split list (one id per line)."""
    try:
        return [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    except FileNotFoundError:
        raise SegpipeError(f"{path}: split list not found; run the split stage first") from None


def write_list(path: Path, ids: Sequence[str]) -> None:
    Path(path).write_text("".join(f"{i}\n" for i in ids))


def training_samples(processed_dir: Path, splits_dir: Path, augmented_dir: Path | None) -> list[Sample]:
    """The ids in train.txt plus every sample of the augment stage (made from train ids only)."""
    samples = samples_in(processed_dir, read_list(Path(splits_dir) / TRAIN_LIST))
    if augmented_dir is not None:
        augmented = sorted(p.stem for p in (Path(augmented_dir) / MASKS).glob("*.png"))
        samples += samples_in(augmented_dir, augmented)
    return samples


def validation_samples(processed_dir: Path, splits_dir: Path) -> list[Sample]:
    return samples_in(processed_dir, read_list(Path(splits_dir) / VAL_LIST))
