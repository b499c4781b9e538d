"""The convert stage: labelme files or image/mask folders -> `images/`, `masks/` and `manifest.csv`.

Every input item (a labelme JSON, or an image with its mask) is converted on its own by
`convert_item`, in worker processes when there are many, and every failure is collected so that
one error lists all the files to fix. The output folder is published whole through `atomic_dir`,
and the metrics file is written only after it, so a failed run changes nothing.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image

from segpipe.config import DataSection
from segpipe.errors import SegpipeError
from segpipe.imageio import IGNORE_INDEX, IMAGE_SUFFIXES, atomic_dir, atomic_write_text, check_apart, write_mask
from segpipe.layout import IMAGES, MANIFEST, MASKS
from segpipe.prep import labelme, maskfolder
from segpipe.prep.parallel import cap_lines, failures, map_files

_EXIF_ORIENTATION = 0x0112
# Files convert may read, by suffix: their names become ids, manifest rows and split-list lines.
_INPUT_SUFFIXES = frozenset({*IMAGE_SUFFIXES, *maskfolder.MASK_SUFFIXES, ".json"})


@dataclass(frozen=True)
class Job:
    """One item to convert: a labelme JSON (mask None) or an image and its mask file."""

    id: str
    source: Path
    mask: Path | None = None


@dataclass(frozen=True)
class Settings:
    """What every worker needs besides its job; small and picklable."""

    format: str
    input_dir: Path
    images_dir: Path
    masks_dir: Path
    classes: tuple[str, ...]
    ignore_labels: tuple[str, ...]
    colors: maskfolder.ColorMap | None


@dataclass(frozen=True)
class ItemResult:
    """What converting one item produced: its row of the manifest, and any unknown mask values."""

    id: str
    source: str  # relative to the input folder, posix
    width: int
    height: int
    counts: tuple[int, ...]  # pixels per class, then ignored pixels
    mask: str | None = None  # the mask file (masks format), relative to the input folder, posix
    unknown: dict[int, int] = field(default_factory=dict)  # unknown mask value -> pixel count


@dataclass(frozen=True)
class ConvertSummary:
    """The outcome of `convert_dataset`: how many images, and the metrics written."""

    images: int
    out_dir: Path
    metrics: dict[str, float | int]

    def __str__(self) -> str:
        fractions = ", ".join(f"{k[len('fraction_'):]} {v:.1%}" for k, v in self.metrics.items() if k.startswith("fraction_"))
        return f"{self.images} images ({fractions} of pixels)"


def convert_dataset(
    input_dir: Path,
    out_dir: Path,
    metrics_path: Path,
    *,
    classes: tuple[str, ...],
    data: DataSection,
    progress: bool = True,
) -> ConvertSummary:
    """Convert a labelme folder or an image/mask folder into the pipeline's dataset layout.

    Writes `out_dir/images/<id>.<ext>`, `out_dir/masks/<id>.png` (class ids, 255 = ignore) and
    `out_dir/manifest.csv`, then the DVC metric JSON `metrics_path`. On any error nothing is changed.

    Args:
        input_dir: the labelme folder (JSONs anywhere below it) or a folder with images/ and masks/.
        out_dir: the output folder, replaced whole on success.
        metrics_path: where to write image counts, sizes and class fractions.
        classes: base.classes; class id = index.
        data: the data section (format, ignore_labels, mask_suffix, mask_colors, unknown_colors, workers).
        progress: show a progress bar (only on a terminal).
    """
    input_dir, out_dir = Path(input_dir), Path(out_dir)
    if not input_dir.is_dir():
        raise SegpipeError(f"{input_dir}: input folder not found")
    check_apart({"OUT_DIR": out_dir, "--metrics": Path(metrics_path)}, {"INPUT_DIR": input_dir})
    colors = maskfolder.parse_mask_colors(data.mask_colors, classes) if data.format == "masks" else None
    jobs, problems, hint = plan_jobs(input_dir, data)
    with atomic_dir(out_dir, owned=(IMAGES, MASKS, MANIFEST)) as tmp:
        settings = Settings(data.format, input_dir, tmp / IMAGES, tmp / MASKS, classes, data.ignore_labels, colors)
        settings.images_dir.mkdir()
        settings.masks_dir.mkdir()
        work = partial(convert_item, settings=settings)
        outcomes = map_files(work, jobs, workers=data.workers, progress=progress, desc="convert")
        results = [r for r in outcomes if isinstance(r, ItemResult)]
        problems += failures(outcomes)
        counted = "labelme files found" if data.format == "labelme" else "image/mask pairs matched"
        _raise_problems(problems, results, colors, data.unknown_colors, f"{len(jobs)} {counted}", hint)
        write_manifest(tmp / MANIFEST, results, classes)
    metrics = dataset_metrics(results, classes)
    atomic_write_text(Path(metrics_path), json.dumps(metrics, indent=2) + "\n")
    return ConvertSummary(len(results), out_dir, metrics)


def plan_jobs(input_dir: Path, data: DataSection) -> tuple[list[Job], list[str], str | None]:
    """The items to convert, checked for duplicate ids, the pairing problems found on the way and
    a hint on fixing them (a mask suffix the masks share), if any."""
    hint = None
    _check_names(input_dir)
    if data.format == "labelme":
        paths, problems = labelme.find_annotations(input_dir)
        jobs = [Job(p.stem, p) for p in paths]
        if not jobs:
            raise SegpipeError("\n".join([f"{input_dir}: no labelme .json files found (data.format is 'labelme')", *problems]))
    else:
        pairs, problems = maskfolder.find_pairs(input_dir, data.mask_suffix)
        jobs = [Job(image.stem, image, mask) for image, mask in pairs]
        hint = maskfolder.mask_suffix_hint(input_dir, data.mask_suffix) if problems else None
    _check_unique_ids(jobs)
    return jobs, problems, hint


def _check_names(input_dir: Path) -> None:
    """Refuse input files whose names cannot survive as ids: the split lists hold one id per line
    and are read stripped, so `trail .json` would become id 'trail' (found nowhere) and a newline
    would split a manifest row or list line in two."""
    problems = []
    for path in sorted(Path(input_dir).rglob("*")):
        relative = path.relative_to(input_dir).as_posix()
        if Path(path.name.strip()).suffix.lower() not in _INPUT_SUFFIXES or path.is_dir():
            continue
        # Cc: \n, \t, ...; Zl/Zp: U+2028/U+2029, which str.splitlines also breaks lines at.
        controls = sorted({c for c in relative if unicodedata.category(c) in ("Cc", "Zl", "Zp")})
        if controls:
            wrong = f"holds the control or line-break character(s) {', '.join(repr(c) for c in controls)}"
        elif path.name != path.name.strip() or path.stem != path.stem.strip():
            wrong = "starts or ends with whitespace (before or after its extension)"
        else:
            continue
        problems.append(f"  {str(Path(input_dir) / relative)!r}: the file name {wrong}")
    if problems:
        raise SegpipeError(
            f"{len(problems)} input file name(s) cannot become ids (file names become ids, one per line in the "
            "manifest and split lists, read without surrounding whitespace); rename them:\n" + cap_lines(problems, indent="  ")
        )


def _check_unique_ids(jobs: Sequence[Job]) -> None:
    """Outputs are named by source stem, so two sources with the same stem would overwrite each other."""
    by_id: dict[str, list[Path]] = {}
    for job in jobs:
        by_id.setdefault(job.id, []).append(job.source)
    clashes = [f"  {item_id!r}: {', '.join(map(str, paths))}" for item_id, paths in by_id.items() if len(paths) > 1]
    if clashes:
        raise SegpipeError(
            "duplicate ids: outputs are named after the source file's stem, and these files share one; "
            "rename or remove one of each:\n" + cap_lines(clashes, indent="  ")
        )


def convert_item(job: Job, settings: Settings) -> ItemResult | SegpipeError:
    """Convert one item into settings.images_dir / masks_dir; a bad input is returned, not raised.

    Returning the SegpipeError lets the caller collect every bad file before reporting; any other
    exception is a bug and propagates, with a note naming the file.
    """
    try:
        if settings.format == "labelme":
            annotation = labelme.load_annotation(job.source, settings.input_dir)
            source, pixels = annotation.image_source, annotation.image
            ids, unknown = labelme.rasterize(annotation, settings.classes, settings.ignore_labels), {}
        else:
            source = job.source
            pixels, ids, unknown = maskfolder.load_pair(job.source, job.mask, settings.colors)
        write_image(settings.images_dir, job.id, source, pixels)
        write_mask(settings.masks_dir / f"{job.id}.png", ids)
    except SegpipeError as exc:
        return exc
    except Exception as exc:
        exc.add_note(f"while converting {job.source}")
        raise
    counts = np.bincount(ids.ravel(), minlength=256)
    return ItemResult(
        id=job.id,
        source=job.source.relative_to(settings.input_dir).as_posix(),
        mask=job.mask.relative_to(settings.input_dir).as_posix() if job.mask else None,
        width=int(ids.shape[1]),
        height=int(ids.shape[0]),
        counts=tuple(int(c) for c in counts[: len(settings.classes)]) + (int(counts[IGNORE_INDEX]),),
        unknown=unknown,
    )


def write_image(folder: Path, item_id: str, source: bytes | Path, pixels: np.ndarray) -> Path:
    """Write an image as `<id>.jpg`/`<id>.png`: the source bytes when they already are what we want.

    A JPEG or PNG that is RGB and needs no EXIF rotation is copied byte for byte (no re-encoding
    loss); anything else is written as a PNG of the decoded, rotated RGB `pixels`.
    """
    suffix = _copyable_suffix(source)
    if suffix is None:
        target = folder / f"{item_id}.png"
        Image.fromarray(pixels).save(target, format="PNG")
    elif isinstance(source, bytes):
        target = folder / f"{item_id}{suffix}"
        target.write_bytes(source)
    else:
        target = folder / f"{item_id}{suffix}"
        shutil.copyfile(source, target)
    return target


def _copyable_suffix(source: bytes | Path) -> str | None:
    """'.jpg' or '.png' when the file can be used as it is, else None (reads the header only)."""
    with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
        if image.mode != "RGB" or image.getexif().get(_EXIF_ORIENTATION, 1) != 1:
            return None
        return {"JPEG": ".jpg", "PNG": ".png"}.get(image.format)


def _raise_problems(
    problems: list[str],
    results: list[ItemResult],
    colors: maskfolder.ColorMap | None,
    unknown_colors: str,
    total: str,
    hint: str | None = None,
) -> None:
    """Raise one SegpipeError listing every bad file and every unknown mask value, if any;
    `total` says what the input held ("12 labelme files found"); `hint`, first so the capped list
    cannot hide it, says how to fix them."""
    sections = []
    if problems:
        listed = cap_lines([f"  {p}" for p in problems], indent="  ")
        sections.append("\n".join([f"{len(problems)} problem(s) in the input ({total}):", *([f"  {hint}"] if hint else []), listed]))
    if colors is not None and unknown_colors == "error":
        report = maskfolder.unknown_values_report([(r.mask, r.unknown) for r in results if r.unknown], colors)
        if report:
            sections.append("\n".join(report))
    if sections:
        raise SegpipeError("\n".join(sections))


def write_manifest(path: Path, results: Sequence[ItemResult], classes: tuple[str, ...]) -> None:
    """manifest.csv: id, source, width, height, pixels_<class>..., pixels_ignore; one row per item, by id."""
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "source", "width", "height", *[f"pixels_{c}" for c in classes], "pixels_ignore"])
        for r in sorted(results, key=lambda r: r.id):
            writer.writerow([r.id, r.source, r.width, r.height, *r.counts])


def dataset_metrics(results: Sequence[ItemResult], classes: tuple[str, ...]) -> dict[str, float | int]:
    """Image count, size range and the fraction of all pixels in each class (6 digits)."""
    totals = np.sum([r.counts for r in results], axis=0, dtype=np.int64)
    pixels = max(int(sum(r.width * r.height for r in results)), 1)
    metrics: dict[str, float | int] = {
        "images": len(results),
        "min_width": min(r.width for r in results),
        "max_width": max(r.width for r in results),
        "min_height": min(r.height for r in results),
        "max_height": max(r.height for r in results),
    }
    for name, count in zip([*classes, "ignore"], totals):
        metrics[f"fraction_{name}"] = round(int(count) / pixels, 6)
    return metrics
