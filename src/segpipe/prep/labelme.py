"""Reading labelme JSON annotations and painting their shapes into a class-id mask.

Shapes are drawn the way labelme's own `utils/shape.py` draws them, so a mask made here matches the
one labelme's `labelme_export_json` would make: polygons and rectangles filled with their outline,
circles as ellipses whose radius is the distance between the two points, lines and line strips
10 pixels wide, points as discs of radius 5, and `mask` shapes (labelme 5) pasted into their box.
Later shapes are painted over earlier ones. Legacy labelme 3.x files (no `shape_type`, no image
size) are read too.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from segpipe.errors import SegpipeError
from segpipe.imageio import IGNORE_INDEX, broken_links, read_image

# labelme's drawing sizes for shapes without an area (utils/shape.py: line_width, point_size).
LINE_WIDTH = 10
POINT_RADIUS = 5
SHAPE_TYPES = ("polygon", "rectangle", "circle", "line", "linestrip", "point", "mask")
# A point may lie outside the image (labelme clips what it draws), but not by more than this many
# image sizes: beyond that it is a corrupt file, and Pillow's 32-bit coordinates would overflow.
MAX_OUTSIDE = 4


@dataclass(frozen=True)
class Annotation:
    """One labelme file, read and checked: the picture and the shapes to paint.

    Attributes:
        path: the JSON file.
        image_source: where the picture came from: the decoded `imageData` bytes, or the image path.
        image: (H, W, 3) uint8 RGB, EXIF orientation applied.
        shapes: the JSON's shape dicts, in drawing order.
    """

    path: Path
    image_source: bytes | Path
    image: np.ndarray
    shapes: list[dict]


def find_annotations(input_dir: Path) -> tuple[list[Path], list[str]]:
    """Every `*.json` file under `input_dir`, in any subfolder, sorted by path, and one problem line
    per `*.json` symlink that leads nowhere (dangling or looping), so that none is dropped unseen."""
    candidates = sorted(Path(input_dir).rglob("*.json"))
    return [p for p in candidates if p.is_file()], broken_links(candidates)


def load_json(path: Path) -> dict:
    """Parse a labelme file; malformed JSON is an error naming the file, line and column."""
    try:
        data = json.loads(Path(path).read_bytes())
    except RecursionError:
        raise SegpipeError(
            f"{path}: JSON nested too deeply to read (thousands of levels); a labelme file is a few levels "
            "deep, so this is not one: re-save it in labelme or remove it"
        ) from None
    except json.JSONDecodeError as exc:
        raise SegpipeError(
            f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); "
            "fix or re-save the file in labelme"
        ) from None
    except UnicodeDecodeError as exc:
        raise SegpipeError(f"{path}: not valid JSON text ({exc}); labelme writes UTF-8") from None
    if not isinstance(data, dict) or not isinstance(data.get("shapes"), list):
        raise SegpipeError(f"{path}: not a labelme file (expected an object with a 'shapes' list)")
    return data


def resolve_image_path(json_path: Path, image_path: str, input_dir: Path) -> Path:
    """The image that `imagePath` names, relative to the JSON's folder; it must lie inside `input_dir`.

    Windows separators are accepted. The check is made on the normalised path, not the resolved
    one, so symlinked data (as DVC may check it out) is still accepted.
    """
    relative = image_path.replace("\\", "/")
    candidate = Path(os.path.normpath(Path(json_path).parent / relative))
    root = Path(os.path.normpath(Path(input_dir).absolute()))
    if not Path(os.path.normpath(candidate.absolute())).is_relative_to(root):
        raise SegpipeError(
            f"{json_path}: imagePath {image_path!r} points outside the input folder {input_dir}; "
            "keep images inside it (or embed them with imageData)"
        )
    return candidate


def load_annotation(json_path: Path, input_dir: Path) -> Annotation:
    """Read a labelme file and its picture (embedded `imageData`, else `imagePath`), sizes checked.

    Args:
        json_path: the labelme JSON file.
        input_dir: the dataset folder; `imagePath` may not point outside it.
    """
    data = load_json(json_path)
    source: bytes | Path
    if data.get("imageData"):
        try:
            source = base64.b64decode(data["imageData"], validate=True)
        except (binascii.Error, TypeError, ValueError) as exc:
            raise SegpipeError(f"{json_path}: imageData is not valid base64 ({exc})") from None
        image = read_image(source, f"{json_path} (imageData)")
    elif isinstance(data.get("imagePath"), str) and data["imagePath"]:
        source = resolve_image_path(json_path, data["imagePath"], input_dir)
        image = read_image(source, f"{source} (imagePath of {json_path})")
    else:
        raise SegpipeError(f"{json_path}: has neither imageData nor imagePath, so there is no image to label")
    _check_size(json_path, data, image.shape[:2])
    return Annotation(Path(json_path), source, image, data["shapes"])


def _check_size(json_path: Path, data: dict, shape: tuple[int, ...]) -> None:
    """imageHeight/imageWidth, when the file has them, must be whole numbers that match the
    (EXIF-rotated) picture."""
    height, width = data.get("imageHeight"), data.get("imageWidth")
    if height is None or width is None:  # labelme 3.x did not store the size
        return
    for key, value in (("imageHeight", height), ("imageWidth", width)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise SegpipeError(
                f"{json_path}: {key} must be a positive integer (pixels), got {value!r} "
                f"({type(value).__name__}); the picture is {shape[1]}x{shape[0]}: write {key}: "
                f"{shape[0] if key == 'imageHeight' else shape[1]}, or re-save the file in labelme"
            )
    if (height, width) != tuple(shape):
        hint = " (the picture's EXIF orientation rotates it; re-open it in labelme)" if (width, height) == tuple(shape) else ""
        raise SegpipeError(
            f"{json_path}: the JSON says the image is {width}x{height} (imageWidth x imageHeight) but the "
            f"image is {shape[1]}x{shape[0]}{hint}; was the image replaced after labelling?"
        )


def label_value(label: object, classes: tuple[str, ...], ignore_labels: tuple[str, ...]) -> int | None:
    """The class id of a label, IGNORE_INDEX for an ignore label, None when it is not known."""
    if label in ignore_labels:
        return IGNORE_INDEX
    if label in classes:
        return classes.index(label)
    return None


def rasterize(annotation: Annotation, classes: tuple[str, ...], ignore_labels: tuple[str, ...]) -> np.ndarray:
    """Paint every shape of `annotation` into an (H, W) uint8 class-id mask, later shapes on top.

    Unpainted pixels are class 0. Labels in `ignore_labels` are painted IGNORE_INDEX (255).

    Args:
        annotation: a loaded labelme file.
        classes: base.classes; a label's class id is its index here.
        ignore_labels: data.ignore_labels.
    """
    path = annotation.path
    unknown = sorted({str(s.get("label")) for s in annotation.shapes if isinstance(s, dict)
                      and label_value(s.get("label"), classes, ignore_labels) is None})
    if unknown:
        raise SegpipeError(
            f"{path}: labels {unknown} are not in base.classes {list(classes)} nor data.ignore_labels "
            f"{list(ignore_labels)}; labels must match a class name exactly (instance suffixes like "
            "'lesion-1' are not stripped): rename them in labelme or add the class to base.classes"
        )
    height, width = annotation.image.shape[:2]
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for index, shape in enumerate(annotation.shapes):
        if not isinstance(shape, dict):
            raise SegpipeError(f"{path}: shape {index} is not an object")
        value = label_value(shape.get("label"), classes, ignore_labels)
        draw_shape(canvas, draw, shape, value, where=f"{path}: shape {index} (label {shape.get('label')!r})")
    return np.asarray(canvas).copy()


def _points(shape: dict, where: str, size: tuple[int, int]) -> list[tuple[float, float]]:
    """The shape's points as floats, each finite and within MAX_OUTSIDE image sizes of the (W, H) image."""
    points = shape.get("points")
    try:
        xy = [(float(x), float(y)) for x, y in points]
    except (TypeError, ValueError, OverflowError):
        raise SegpipeError(f"{where}: 'points' must be a list of [x, y] pairs, got {points!r:.80}") from None
    if not all(math.isfinite(c) for p in xy for c in p):
        raise SegpipeError(f"{where}: 'points' contains a non-finite coordinate")
    width, height = size
    for x, y in xy:
        if not (-MAX_OUTSIDE * width <= x <= (MAX_OUTSIDE + 1) * width and -MAX_OUTSIDE * height <= y <= (MAX_OUTSIDE + 1) * height):
            raise SegpipeError(
                f"{where}: point ({x:g}, {y:g}) lies more than {MAX_OUTSIDE} image sizes outside the "
                f"{width}x{height} image, so it cannot be a real outline; redraw the shape in labelme"
            )
    return xy


def _need(xy: list, count: int, shape_type: str, where: str, at_least: bool = False) -> None:
    if len(xy) < count if at_least else len(xy) != count:
        amount = f"at least {count}" if at_least else str(count)
        raise SegpipeError(f"{where}: a {shape_type} needs {amount} points, got {len(xy)}")


def _zero_area(where: str, what: str) -> SegpipeError:
    return SegpipeError(f"{where}: {what}, an annotation mistake; delete or redraw the shape in labelme")


def polygon_area(xy: list[tuple[float, float]]) -> float:
    """The area enclosed by a polygon (shoelace formula), in square pixels."""
    x = np.array([p[0] for p in xy])
    y = np.array([p[1] for p in xy])
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def draw_shape(canvas: Image.Image, draw: ImageDraw.ImageDraw, shape: dict, value: int, where: str) -> None:
    """Paint one labelme shape onto `canvas` (mode L) with `value`, exactly as labelme fills it.

    Args:
        canvas: the mask being painted; `draw` draws on it.
        shape: the labelme shape dict; a missing or null shape_type is a polygon (labelme 3.x).
        value: the class id (or IGNORE_INDEX) to paint.
        where: how to name the shape in error messages (file, index and label).
    """
    shape_type = shape.get("shape_type") or "polygon"
    if shape_type == "mask":
        _paste_mask(canvas, shape, value, where)
        return
    xy = _points(shape, where, canvas.size)
    if shape_type == "polygon":
        _need(xy, 3, shape_type, where, at_least=True)
        if len(set(xy)) < 3 or polygon_area(xy) == 0:
            raise _zero_area(where, "the polygon encloses no area (fewer than 3 distinct points or all on a line)")
        draw.polygon(xy, outline=value, fill=value)
    elif shape_type == "rectangle":
        # labelme stores the two corners in drag order; newer versions may store all four.
        _need(xy, 2, shape_type, where, at_least=True)
        (x0, y0), (x1, y1) = np.min(xy, axis=0), np.max(xy, axis=0)
        if x0 == x1 or y0 == y1:
            raise _zero_area(where, "the rectangle has zero width or height")
        draw.rectangle([(x0, y0), (x1, y1)], outline=value, fill=value)
    elif shape_type == "circle":
        _need(xy, 2, shape_type, where)
        (cx, cy), (px, py) = xy
        radius = math.hypot(cx - px, cy - py)
        if radius == 0:
            raise _zero_area(where, "the circle has radius 0")
        draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], outline=value, fill=value)
    elif shape_type in ("line", "linestrip"):
        _need(xy, 2, shape_type, where, at_least=shape_type == "linestrip")
        draw.line(xy, fill=value, width=LINE_WIDTH)
    elif shape_type == "point":
        _need(xy, 1, shape_type, where)
        (cx, cy), r = xy[0], POINT_RADIUS
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=value, fill=value)
    else:
        raise SegpipeError(f"{where}: unknown shape_type {shape_type!r}; expected one of {list(SHAPE_TYPES)}")


def _decode_shape_mask(shape: dict, where: str) -> np.ndarray:
    """The boolean array of a labelme 5 `mask` shape (base64 PNG in its `mask` field)."""
    encoded = shape.get("mask")
    if not isinstance(encoded, str) or not encoded:
        raise SegpipeError(f"{where}: a mask shape needs its 'mask' field (a base64 PNG)")
    try:
        with Image.open(io.BytesIO(base64.b64decode(encoded, validate=True))) as image:
            image.load()
            if image.mode not in ("1", "L", "P"):
                image = image.convert("L")
            return np.asarray(image) != 0
    except (binascii.Error, ValueError, OSError) as exc:
        raise SegpipeError(f"{where}: the 'mask' field is not a base64-encoded image ({exc})") from None


def _paste_mask(canvas: Image.Image, shape: dict, value: int, where: str) -> None:
    """Paint the True pixels of a mask shape whose top-left corner is the shape's first point.

    labelme stores points [[x1, y1], [x2, y2]] with the mask covering rows y1..y2 and columns
    x1..x2 inclusive; parts of the box outside the image are clipped.
    """
    xy = _points(shape, where, canvas.size)
    _need(xy, 2, "mask", where)
    bits = _decode_shape_mask(shape, where)
    (x1, y1), (x2, y2) = np.asarray(xy).astype(int)  # truncated, as labelme's shapes_to_label does
    if bits.shape != (y2 - y1 + 1, x2 - x1 + 1):
        raise SegpipeError(
            f"{where}: the mask is {bits.shape[1]}x{bits.shape[0]} pixels but its box "
            f"({x1},{y1})-({x2},{y2}) is {x2 - x1 + 1}x{y2 - y1 + 1}; re-save the file in labelme"
        )
    width, height = canvas.size
    top, left = max(y1, 0), max(x1, 0)
    bottom, right = min(y1 + bits.shape[0], height), min(x1 + bits.shape[1], width)
    if top >= bottom or left >= right:
        return
    window = bits[top - y1 : bottom - y1, left - x1 : right - x1]
    stamp = Image.fromarray(window.astype(np.uint8) * 255)
    canvas.paste(value, (left, top, right, bottom), mask=stamp)
