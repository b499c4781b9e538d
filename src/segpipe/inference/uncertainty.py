"""What to label next: rank images by how unsure the model is, and pre-annotate the most unsure.

The score is the mean over an image's pixels of the entropy of the softmax, in nats (0: certain;
ln C: uniform over C classes). It needs one forward pass per image, the same one `predict` makes,
and it is defined for every image, also one in which the model sees no object at all (a boundary
disagreement score is undefined there, and D4 test-time augmentation would cost 8 passes per
image on a CPU). Padding added by the letterbox is not counted: the probabilities are those of
the image's own pixels.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from segpipe.errors import SegpipeError
from segpipe.imageio import atomic_write, atomic_write_text, check_apart, list_images, read_image, read_image_for
from segpipe.inference.annotate import check_no_annotations, check_tolerance, model_identity, write_annotation
from segpipe.inference.predictor import Predictor, class_map
from segpipe.palette import output_mask

RANKING = "ranking.csv"


@dataclass(frozen=True)
class Ranked:
    """One image's place in the ranking: rank 1 is the most uncertain."""

    image: Path
    score: float
    rank: int


def mean_entropy(probs: torch.Tensor) -> float:
    """Mean over pixels of -sum_c p_c ln p_c for (C, H, W) probabilities, in nats (0 ln 0 = 0)."""
    entropy = -torch.special.xlogy(probs, probs).sum(dim=0)  # (H, W)
    return float(entropy.double().mean())


def rank_scores(scores: Sequence[tuple[Path, float]]) -> list[Ranked]:
    """Most uncertain first; equal scores in file-name order, so the ranking is reproducible."""
    ordered = sorted(scores, key=lambda item: (-item[1], str(item[0])))
    return [Ranked(image, score, rank) for rank, (image, score) in enumerate(ordered, start=1)]


def write_ranking(path: Path, ranking: Sequence[Ranked], root: Path) -> None:
    """`ranking.csv`: image (relative to `root`), score (mean entropy, nats), rank; written atomically."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["image", "score", "rank"])
    for row in ranking:
        writer.writerow([row.image.relative_to(root).as_posix(), f"{row.score:.6f}", row.rank])
    atomic_write_text(path, buffer.getvalue())


def image_probs(predictor: Predictor, paths: Sequence[Path], batch_size: int = 8) -> Iterator[tuple[Path, np.ndarray, torch.Tensor]]:
    """(path, image, (C, H, W) probabilities at the image's full size) of each image, predicted as
    the model was trained: letterboxed whole (decoded no larger than the canvas needs), or in its
    own tiles for a patch model."""
    if predictor.tiling is not None:
        for path in paths:
            image = read_image(path)
            yield path, image, predictor.predict_image(image, predictor.tiling, keep_probs=True)[1]
        return
    for start in range(0, len(paths), batch_size):
        chunk = paths[start : start + batch_size]
        loaded = [read_image_for(path, fit=predictor.canvas) for path in chunk]
        probs = predictor.predict_batch([image for image, _ in loaded], full_sizes=[size for _, size in loaded])
        yield from ((path, image, p) for path, (image, _), p in zip(chunk, loaded, probs))


def rank_folder(predictor: Predictor, images: Sequence[Path], batch_size: int = 8, progress: bool = True) -> list[Ranked]:
    """Every image of `images` ranked by mean pixel entropy, most uncertain first."""
    scores = []
    with tqdm(total=len(images), desc="suggest", unit="img", disable=None if progress else True) as bar:
        for path, _, probs in image_probs(predictor, images, batch_size):
            scores.append((path, mean_entropy(probs)))
            bar.update(1)
    return rank_scores(scores)


def suggest(
    checkpoint: Path,
    folder: Path,
    out_dir: Path,
    top: int,
    *,
    tolerance: float = 1.0,
    batch_size: int = 8,
    device: torch.device = torch.device("cpu"),
    progress: bool = True,
) -> list[Ranked]:
    """Rank the images of `folder` by uncertainty into `out_dir/ranking.csv`, and write the mask and
    labelme pre-annotation (`<stem>.png`, `<stem>.json`) of the `top` most uncertain into `out_dir`.

    Raises SegpipeError before writing anything for bad arguments, an unreadable image or
    checkpoint, or a labelme file of a top image already in `out_dir`.
    """
    folder, out_dir = Path(folder), Path(out_dir)
    images = _check_suggest_args(checkpoint, folder, out_dir, top, tolerance)
    predictor = Predictor.from_checkpoint(checkpoint, device)
    ranking = rank_folder(predictor, images, batch_size, progress)
    chosen = [row.image for row in ranking[:top]]
    check_no_annotations(out_dir, [path.stem for path in chosen])
    out_dir.mkdir(parents=True, exist_ok=True)
    model = model_identity(checkpoint)
    for path, _, probs in image_probs(predictor, chosen, batch_size):
        labels = class_map(probs)
        mask = output_mask(labels, predictor.num_classes)
        atomic_write(out_dir / f"{path.stem}.png", lambda tmp: mask.save(tmp, format="PNG"))
        write_annotation(out_dir, path, labels, predictor.classes, model, tolerance)
    write_ranking(out_dir / RANKING, ranking, folder)
    return ranking


def _check_suggest_args(checkpoint: Path, folder: Path, out_dir: Path, top: int, tolerance: float) -> list[Path]:
    if top < 0:
        raise SegpipeError(f"--top must be >= 0 (images to pre-annotate), got {top}")
    check_tolerance(tolerance)
    if not folder.is_dir():
        raise SegpipeError(f"{folder}: no such folder; FOLDER is the folder of images to rank")
    if out_dir.exists() and not out_dir.is_dir():
        raise SegpipeError(f"--out {out_dir} is a file; name a folder (it is created if missing)")
    check_apart({"--out": out_dir}, [("CHECKPOINT", Path(checkpoint)), ("FOLDER", folder)])
    images = list_images(folder)
    if not images:
        raise SegpipeError(f"{folder}: no images found there; FOLDER is the folder of images to rank")
    return images
