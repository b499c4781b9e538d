"""Pre-annotations: a predicted class map as a labelme JSON file that labelme opens directly.

One polygon per connected region of each class (8-connected; background 4-connected, so that a
class's diagonal step closes its outline), simplified with Douglas-Peucker
at a tolerance in pixels. labelme polygons have no holes, and `convert` paints shapes in file
order, later ones on top (`segpipe.prep.labelme.rasterize`). So every region is written as its
outer outline with its holes filled, and what lies in a hole is written after it: a hole of
background as a polygon labelled with the background class (`classes[0]`), which paints 0 again;
an island of another class inside that hole after that, and so on. Regions are ordered by the
area their outline encloses, largest first: an outline that lies inside another region's hole
encloses less than that region's outline, so it is always drawn later. The background around
everything (the one that touches the image border) needs no polygon: `convert` starts from 0.

A region with no area (a single pixel, a one-pixel-wide line) gets a quarter-pixel detour at its
first point, because `convert` refuses zero-area polygons as annotation mistakes.

Every file carries `flags: {"segpipe_suggestion": true}` and each shape a `description` naming
the model (checkpoint file, the first 12 hex digits of its SHA-256, and its MLflow run when the
train stage left `mlflow_run_id.txt` beside it). An existing `<stem>.json` is never overwritten:
`AnnotationExistsError` is raised before anything is written.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import cv2
import numpy as np

from segpipe.errors import SegpipeError
from segpipe.imageio import atomic_write_text, read_class_mask
from segpipe.models.checkpoint import load_checkpoint
from segpipe.tracking import RUN_ID_FILE

LABELME_VERSION = "5.5.0"  # the labelme file format written; labelme 4 and 5 both open it
SUGGESTION_FLAG = "segpipe_suggestion"


class AnnotationExistsError(SegpipeError):
    """A pre-annotation would replace a labelme file that is already there (perhaps a human's)."""


def model_identity(checkpoint: Path) -> str:
    """How a suggestion names its model: `best.pt sha256:0123456789ab`, plus `mlflow run ID` when
    the train stage wrote the run id beside the checkpoint."""
    checkpoint = Path(checkpoint)
    digest = hashlib.sha256()
    with open(checkpoint, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    identity = f"{checkpoint.name} sha256:{digest.hexdigest()[:12]}"
    run_file = checkpoint.parent / RUN_ID_FILE
    if run_file.is_file():
        run_id = run_file.read_text(encoding="utf-8").strip()
        if run_id:
            identity += f" mlflow run {run_id}"
    return identity


def _regions(labels: np.ndarray) -> Iterable[tuple[int, np.ndarray]]:
    """(class id, boolean mask) of every 8-connected region that needs a polygon: all regions of
    non-background classes, and the background regions that do not touch the image border (holes)."""
    for value in np.unique(labels):
        # Background 4-connected, the classes 8-connected: a diagonal step in a class's outline
        # then closes it, so the background inside is a hole, not part of the outside.
        connectivity = 4 if value == 0 else 8
        count, components = cv2.connectedComponents((labels == value).astype(np.uint8), connectivity=connectivity)
        for index in range(1, count):
            region = components == index
            if value == 0 and (region[0].any() or region[-1].any() or region[:, 0].any() or region[:, -1].any()):
                continue
            yield int(value), region


def _outline(region: np.ndarray, tolerance: float) -> np.ndarray:
    """The (N, 2) outer outline of one region through its border pixels' centres, simplified to
    `tolerance` pixels."""
    contours, _ = cv2.findContours(region.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    contour = max(contours, key=len)
    if tolerance > 0:
        simplified = cv2.approxPolyDP(contour, tolerance, closed=True)
        # Simplifying a thin region can collapse it to a line; keep the exact outline then.
        if len(simplified) >= 3 and cv2.contourArea(simplified) > 0:
            contour = simplified
    points = contour.reshape(-1, 2).astype(np.float64)
    if len(points) < 3 or cv2.contourArea(contour) == 0:
        # A single pixel or a one-pixel-wide line: its outline goes out and back and encloses
        # nothing, which `convert` refuses. A quarter-pixel step at the start gives it an area;
        # labelme's outline, drawn through rounded points, still paints exactly these pixels.
        points = np.concatenate([points, points[:1] + [[0.25, 0.0], [0.25, 0.25]]])
    return points


def mask_to_shapes(labels: np.ndarray, classes: Sequence[str], tolerance: float = 1.0, description: str = "") -> list[dict]:
    """The labelme polygons that `convert` paints back into `labels`, in drawing order.

    Args:
        labels: (H, W) uint8 class ids, each < len(classes).
        classes: class names in id order; classes[0] is the background.
        tolerance: Douglas-Peucker tolerance in pixels (0: every border pixel is a vertex).
        description: written into each shape's `description`.
    """
    check_tolerance(tolerance)
    if labels.size and int(labels.max()) >= len(classes):
        raise SegpipeError(f"the mask has class id {int(labels.max())} but there are only {len(classes)} classes: {list(classes)}")
    outlined = []
    for value, region in _regions(labels):
        points = _outline(region, tolerance)
        outlined.append((cv2.contourArea(points.astype(np.float32)), value, points))
    # Largest enclosed area first: a region inside another's hole is drawn after it.
    outlined.sort(key=lambda item: -item[0])
    return [
        {
            "label": classes[value],
            "points": [[float(x), float(y)] for x, y in points],
            "group_id": None,
            "description": description,
            "shape_type": "polygon",
            "flags": {},
            "mask": None,
        }
        for _, value, points in outlined
    ]


def labelme_document(
    labels: np.ndarray, classes: Sequence[str], image_path: str, model: str, tolerance: float = 1.0
) -> dict:
    """A whole labelme file for one image: `image_path` relative to the JSON, imageData null."""
    height, width = labels.shape
    return {
        "version": LABELME_VERSION,
        "flags": {SUGGESTION_FLAG: True},
        "shapes": mask_to_shapes(labels, classes, tolerance, description=f"model suggestion: {model}"),
        "imagePath": image_path,
        "imageData": None,
        "imageHeight": int(height),
        "imageWidth": int(width),
    }


def annotation_path(out_dir: Path, stem: str) -> Path:
    return Path(out_dir) / f"{stem}.json"


def check_no_annotations(out_dir: Path, stems: Iterable[str]) -> None:
    """Raise AnnotationExistsError naming every `<stem>.json` already in `out_dir`."""
    existing = [p for p in (annotation_path(out_dir, s) for s in stems) if p.exists() or p.is_symlink()]
    if existing:
        listed = ", ".join(str(p) for p in existing[:5]) + (f" and {len(existing) - 5} more" if len(existing) > 5 else "")
        raise AnnotationExistsError(
            f"{listed}: a labelme file is already there (a human annotation, or an earlier suggestion) and "
            "pre-annotations never overwrite one; write them into another --out folder, or move those files away"
        )


def check_tolerance(tolerance: float) -> None:
    if not 0 <= tolerance < math.inf:  # also refuses NaN
        raise SegpipeError(f"--tolerance must be >= 0 pixels, got {tolerance}")


def check_annotatable(out_dir: Path, stems: Iterable[str], tolerance: float) -> None:
    """What `predict --labelme` checks before predicting: a valid tolerance, no labelme file in the way."""
    check_tolerance(tolerance)
    check_no_annotations(out_dir, stems)


def write_annotation(out_dir: Path, image: Path, labels: np.ndarray, classes: Sequence[str], model: str, tolerance: float) -> Path:
    """Write `out_dir/<image stem>.json` (atomically) for the class map `labels` of `image`."""
    target = annotation_path(out_dir, Path(image).stem)
    relative = Path(os.path.relpath(Path(image).absolute(), Path(out_dir).absolute())).as_posix()
    document = labelme_document(labels, classes, relative, model, tolerance)
    atomic_write_text(target, json.dumps(document, indent=2) + "\n")
    return target


def read_predicted_mask(path: Path, num_classes: int) -> np.ndarray:
    """The (H, W) class ids of a mask `predict` wrote: 0/255 for 2 classes, palette ids for more."""
    ids = read_class_mask(path)
    return (ids > 0).astype(np.uint8) if num_classes == 2 else ids


def annotate_masks(
    checkpoint: Path, masks: Sequence[Path], images: Sequence[Path], out_dir: Path, tolerance: float = 1.0
) -> list[Path]:
    """Write a labelme pre-annotation beside each mask `predict` wrote into `out_dir`.

    Args:
        checkpoint: the model that predicted them (its classes and identity go into the files).
        masks: `out_dir/<stem>.png` masks, as `predict_paths` reported them.
        images: the input images; the one with the mask's stem is the JSON's imagePath.
        tolerance: Douglas-Peucker tolerance in pixels.
    """
    classes = tuple(load_checkpoint(checkpoint)["classes"])
    model = model_identity(checkpoint)
    by_stem = {Path(image).stem: Path(image) for image in images}
    return [
        write_annotation(out_dir, by_stem[Path(mask).stem], read_predicted_mask(mask, len(classes)), classes, model, tolerance)
        for mask in masks
    ]
