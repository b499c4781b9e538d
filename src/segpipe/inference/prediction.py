"""The predict command's library: masks for new images, at each image's exact size.

For each input image `<stem>.png` is written to the output folder: with two classes a grayscale
PNG of 0 (background) and 255 (foreground), the form the paper publishes; with more, a VOC
palette PNG of class ids. Optional `<stem>_overlay.jpg` (the mask blended over the image) and
`<stem>_probs.npy` (C, H, W float16 softmax probabilities). A file that cannot be read is
reported and skipped; the others are still predicted. Inputs are never overwritten.
"""

from __future__ import annotations

import glob
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from segpipe.errors import SegpipeError
from segpipe.imageio import IMAGE_SUFFIXES, atomic_write, check_apart, list_images, read_image, read_image_for
from segpipe.palette import colour_overlay, mask_png
from segpipe.inference.postprocess import PostProcess
from segpipe.inference.predictor import Predictor, class_map
from segpipe.data.spec import DEFAULT_WINDOW_BATCH
from segpipe.data.tiling import DEFAULT_OVERLAP, Tiling


@dataclass
class PredictReport:
    """What `predict_paths` did: the masks written and one message per input that failed."""

    written: list[Path] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed


@dataclass(frozen=True)
class PredictOptions:
    """How to predict and what to write besides the mask."""

    overlay: bool = False
    probs: bool = False
    tile: int | None = None  # None: as the model was trained (whole letterboxed images, or its patch tiles)
    overlap: float = DEFAULT_OVERLAP
    tta: bool = False
    batch_size: int = DEFAULT_WINDOW_BATCH
    post: PostProcess = PostProcess()  # clean-up of each class map before it is written

    def check(self) -> None:
        """Raise on bad values before anything is read."""
        if self.batch_size < 1:
            raise SegpipeError(f"--batch-size must be >= 1, got {self.batch_size}")
        Tiling(self.tile or 1, self.overlap, batch_size=self.batch_size)


def predict_paths(
    checkpoint: Path,
    inputs: Sequence[str],
    out_dir: Path,
    options: PredictOptions = PredictOptions(),
    *,
    device: torch.device = torch.device("cpu"),
    progress: bool = True,
) -> PredictReport:
    """Predict every image named by `inputs` and write its mask (and extras) into `out_dir`.

    Args:
        checkpoint: the trained model (best.pt).
        inputs: image files, folders (the images directly inside) or glob patterns.
        out_dir: where the outputs go; must not be a folder that holds an input.
        options: how to predict and what to write besides the masks.
        device: where the model runs.
        progress: show a progress bar (on a terminal only).
    Raises:
        SegpipeError for bad arguments (nothing matched, out_dir is a file or holds inputs, two
        inputs whose outputs would share a name, an unreadable checkpoint), before anything is
        written; unreadable images are only reported in the returned report.
    """
    options.check()
    images = resolve_inputs(inputs)
    out_dir = Path(out_dir)
    check_outputs(images, out_dir, options, checkpoint)
    predictor = Predictor.from_checkpoint(checkpoint, device)  # an unreadable checkpoint fails before out_dir exists
    out_dir.mkdir(parents=True, exist_ok=True)
    tiling = predictor.windows(options.tile, options.overlap, options.batch_size)  # a patch model brings its own
    report = PredictReport()
    batch = 1 if tiling is not None else options.batch_size
    with tqdm(total=len(images), desc="predict", unit="img", disable=None if progress else True) as bar:
        for chunk in _chunks(images, batch):
            # Whole images that nobody sees at full size (no tiles, no overlay) are decoded no
            # larger than the model's canvas needs.
            reduced = tiling is None and not options.overlay
            loaded = _read_all(chunk, report, predictor.canvas if reduced else None)
            try:
                for path, image, labels, probs in _predict(predictor, loaded, options, tiling):
                    report.written.append(write_outputs(out_dir / path.stem, image, labels, probs, predictor.num_classes, options))
            except SegpipeError as exc:  # e.g. --probs of an image too large to hold them
                report.failed.append(f"{', '.join(str(path) for path, _, _ in loaded)}: {exc}")
            bar.update(len(chunk))
    return report


def resolve_inputs(inputs: Sequence[str]) -> list[Path]:
    """The image files that `inputs` (files, folders, glob patterns) name, in the order given, each once."""
    found: dict[Path, Path] = {}  # resolved path -> the path as named first
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            matches = list_images(path)
        elif path.is_file():
            matches = [path]
        elif glob.has_magic(item):
            matches = sorted(Path(p) for p in glob.glob(item) if Path(p).is_file() and Path(p).suffix.lower() in IMAGE_SUFFIXES)
        else:
            raise SegpipeError(f"{item}: no such file or folder; check the path")
        if not matches:
            raise SegpipeError(f"{item}: no images ({', '.join(IMAGE_SUFFIXES)}) found there; check the path or pattern")
        for match in matches:
            found.setdefault(match.resolve(), match)
    return list(found.values())


def output_names(stem: str, options: PredictOptions) -> list[str]:
    """The files one input writes into the output folder: its mask and the extras asked for."""
    return [f"{stem}.png"] + [f"{stem}_overlay.jpg"] * options.overlay + [f"{stem}_probs.npy"] * options.probs


def check_outputs(images: Sequence[Path], out_dir: Path, options: PredictOptions, checkpoint: Path) -> None:
    """Refuse an --out that is a file or holds an input (its folder included), and two inputs whose
    outputs would share a name (`a.jpg` and `A.png`, one file on macOS and Windows)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise SegpipeError(f"--out {out_dir} is a file; name a folder for the masks (it is created if missing)")
    check_apart({"--out": out_dir}, [("CHECKPOINT", Path(checkpoint)), *(("INPUTS", image) for image in images)])
    # casefold: names that differ only in case are one file on macOS and Windows.
    writer: dict[str, Path] = {}
    for image in images:
        for name in output_names(image.stem, options):
            other = writer.setdefault(name.casefold(), image)
            if other != image:
                raise SegpipeError(
                    f"{other} and {image} would both write {out_dir / name}, and one would overwrite the "
                    "other; rename one of them or predict them into different --out folders"
                )


def _chunks(items: Sequence[Path], size: int) -> Iterator[Sequence[Path]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _read_all(
    paths: Sequence[Path], report: PredictReport, fit: tuple[int, int] | None
) -> list[tuple[Path, np.ndarray, tuple[int, int]]]:
    """(path, pixels, full (H, W)) of the images that could be read, decoded at reduced scale
    when `fit` (the model's canvas) allows; every other one is recorded in `report.failed`."""
    loaded = []
    for path in paths:
        try:
            if fit is None:
                image = read_image(path)
                loaded.append((path, image, image.shape[:2]))
            else:
                loaded.append((path, *read_image_for(path, fit=fit)))
        except SegpipeError as exc:
            report.failed.append(str(exc))
    return loaded


def _predict(
    predictor: Predictor,
    loaded: list[tuple[Path, np.ndarray, tuple[int, int]]],
    options: PredictOptions,
    tiling: Tiling | None,
) -> Iterator[tuple[Path, np.ndarray, np.ndarray, torch.Tensor | None]]:
    """(path, image, labels (H, W) uint8, probs (C, H, W) or None) per image; labels and probs
    at the full size even where the image was decoded at reduced scale."""
    if tiling is not None:
        for path, image, _ in loaded:
            labels, probs = predictor.predict_image(image, tiling, tta=options.tta, keep_probs=options.probs)
            yield path, image, options.post(labels), probs
        return
    all_probs = predictor.predict_batch(
        [image for _, image, _ in loaded], tta=options.tta, full_sizes=[size for _, _, size in loaded]
    )
    for (path, image, _), probs in zip(loaded, all_probs):
        yield path, image, options.post(class_map(probs)), probs if options.probs else None


def write_outputs(
    stem: Path,
    image: np.ndarray,
    labels: np.ndarray,
    probs: torch.Tensor | None,
    num_classes: int,
    options: PredictOptions,
) -> Path:
    """Write `<stem>.png` and, as asked, `<stem>_overlay.jpg` and `<stem>_probs.npy`; return the mask's path."""
    mask_path = stem.with_name(f"{stem.name}.png")
    png = mask_png(labels, num_classes)
    atomic_write(mask_path, lambda tmp: tmp.write_bytes(png))
    if options.overlay:
        overlay = Image.fromarray(colour_overlay(image, labels, num_classes))
        # JPEG: a photo blended with colours is 5-6 MB as a full-resolution PNG, a tenth of that here.
        atomic_write(stem.with_name(f"{stem.name}_overlay.jpg"), lambda tmp: overlay.save(tmp, format="JPEG", quality=90))
    if probs is not None:
        half = probs.to(torch.float16).numpy()
        atomic_write(stem.with_name(f"{stem.name}_probs.npy"), lambda tmp: _save_npy(tmp, half))
    return mask_path


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as handle:
        np.save(handle, array)
