"""Seeded train/validation split (and k-fold) that moves few ids when images are added.

Each id gets a number in [0, 1) from a hash of the seed and the id alone, and the ids are ranked by
it. The hold-out split validates on the round(n * val_fraction) lowest-ranked ids (at least one,
and at least one left to train on), so the realised fraction is as close to `val_fraction` as n
allows (halves round up). k-fold cuts the ranking into k runs whose sizes differ by at most one. An added image takes
its rank among the others, so at most a few ids cross each boundary (one for the hold-out split),
and the same seed and data always give the same lists.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from segpipe.config import SplitSection
from segpipe.errors import SegpipeError
from segpipe.imageio import atomic_dir, check_apart
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
    if config.folds > len(ids):
        raise SegpipeError(f"split.folds is {config.folds} but there are only {len(ids)} images; lower split.folds")
    ranked = sorted(set(ids), key=lambda image_id: (id_position(image_id, seed), image_id))
    n = len(ranked)
    if config.folds:
        # Fold f is the f-th of k runs of the ranking: floor(f * n / k) up to floor((f + 1) * n / k).
        start, stop = config.fold * n // config.folds, (config.fold + 1) * n // config.folds
    else:
        # Half rounds up (Python's round() would send 2.5 to 2); the epsilon absorbs float error in n * f.
        start, stop = 0, min(max(math.floor(n * config.val_fraction + 0.5 + 1e-9), 1), n - 1)
    val = set(ranked[start:stop])
    return Split(train=sorted(i for i in ranked if i not in val), val=sorted(val))


def describe(split: Split, config: SplitSection) -> str:
    """One line for the split report: the list sizes and the realised validation fraction."""
    total = len(split.train) + len(split.val)
    which = f"fold {config.fold} of {config.folds}" if config.folds else f"val_fraction {config.val_fraction}"
    return f"{len(split.train)} train, {len(split.val)} val ({len(split.val) / total:.1%} of {total}; {which})"


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
    check_apart({"SPLITS_DIR": Path(splits_dir)}, {"PROCESSED_DIR": Path(processed_dir)})
    split = split_ids(read_ids(Path(processed_dir) / MANIFEST), config, seed)
    with atomic_dir(Path(splits_dir), owned=(TRAIN_LIST, VAL_LIST)) as tmp:
        write_list(tmp / TRAIN_LIST, split.train)
        write_list(tmp / VAL_LIST, split.val)
    return split
