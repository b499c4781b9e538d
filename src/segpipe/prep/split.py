"""Seeded train/validation split (and k-fold), stable when images are added.

Each id gets a number in [0, 1) from a hash of the seed and the id alone. The hold-out split puts an
id in validation when its number is below `val_fraction`; k-fold assigns fold `floor(number * k)`.
Because no id's number depends on the other ids, adding images never moves an existing image from
one list to the other, and the same seed and data always give the same lists.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from segpipe.config import SplitSection
from segpipe.errors import SegpipeError
from segpipe.imageio import atomic_dir
from segpipe.layout import MANIFEST, TRAIN_LIST, VAL_LIST, write_list


@dataclass(frozen=True)
class Split:
    train: list[str]
    val: list[str]


def id_position(image_id: str, seed: int) -> float:
    """A number in [0, 1) fixed by the seed and the id, uniform over ids."""
    digest = hashlib.sha256(f"{seed}:{image_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_ids(ids: list[str], config: SplitSection, seed: int) -> Split:
    """Split ids into train and validation lists (each sorted) by hold-out fraction or k-fold."""
    if len(ids) < 2:
        raise SegpipeError(f"split needs at least 2 images, got {len(ids)}")
    positions = {image_id: id_position(image_id, seed) for image_id in ids}
    if config.folds:
        is_val = {i: int(p * config.folds) == config.fold for i, p in positions.items()}
    else:
        is_val = {i: p < config.val_fraction for i, p in positions.items()}
    val = sorted(i for i in ids if is_val[i])
    train = sorted(i for i in ids if not is_val[i])
    # On a tiny dataset the hash can leave one side empty; move the id nearest the boundary so both
    # lists are usable. This is the only case in which adding images can move an existing one.
    if not val:
        nearest = min(train, key=positions.get)
        train.remove(nearest)
        val = [nearest]
    elif not train:
        nearest = max(val, key=positions.get)
        val.remove(nearest)
        train = [nearest]
    return Split(train=train, val=val)


def read_ids(manifest: Path) -> list[str]:
    """The ids listed in a converted dataset's manifest.csv."""
    try:
        ids = pd.read_csv(manifest, dtype={"id": str})["id"].tolist()
    except FileNotFoundError:
        raise SegpipeError(f"{manifest}: not found; run the convert stage first") from None
    except (KeyError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise SegpipeError(f"{manifest}: not a manifest with an 'id' column ({exc})") from None
    return ids



def write_split(processed_dir: Path, splits_dir: Path, config: SplitSection, seed: int) -> Split:
    """Split the ids of a converted dataset and write `train.txt` and `val.txt` into splits_dir."""
    split = split_ids(read_ids(Path(processed_dir) / MANIFEST), config, seed)
    with atomic_dir(Path(splits_dir)) as tmp:
        write_list(tmp / TRAIN_LIST, split.train)
        write_list(tmp / VAL_LIST, split.val)
    return split
