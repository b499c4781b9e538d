"""Deterministic synthetic datasets that ship with the repo, so the pipeline runs without real data.

``make_lesions``: dermoscopy-like JPEGs with labelme annotations (binary, as in ISIC).
``make_aerial``: square aerial tiles with RGB colour-coded masks (the Dubai aerial dataset's layout).
Image ``i`` depends only on ``seed`` and ``i``: more images never change those already written.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from segpipe.errors import SegpipeError
from segpipe.imageio import atomic_dir
from segpipe.layout import IMAGES, MASKS

LESION_CLASSES = ("background", "lesion")
AERIAL_CLASSES = ("unlabeled", "building", "land", "road", "vegetation", "water")
AERIAL_COLORS: dict[str, str] = {
    "unlabeled": "#9B9B9B",
    "building": "#3C1098",
    "land": "#8429F6",
    "road": "#6EC1E4",
    "vegetation": "#FEDD3A",
    "water": "#E2A929",
}
JPEG_QUALITY = 92
LABELME_VERSION = "5.4.1"
MIN_SIZE = 32

# Slots of index % 20. Most annotations are polygons; a few use the other labelme shape types so
# the converter's rectangle and circle paths run, and labelme embeds the image by default, so 2 in
# 20 files carry imageData.
_SHAPE_SLOTS = {3: "rectangle", 13: "rectangle", 7: "circle", 17: "circle"}
_EMBED_SLOTS = {5, 17}
_STREAM_LESION, _STREAM_AERIAL = 0, 1


@dataclass(frozen=True)
class _Blob:
    """A smooth irregular outline: an ellipse whose radius is modulated by a few harmonics,
    r(t) = 1 + sum_k amp_k cos(k t + phase_k), then rotated by `angle` (radians)."""

    centre: tuple[float, float]
    axes: tuple[float, float]
    angle: float
    amps: np.ndarray
    phases: np.ndarray

    def points(self, n: int) -> np.ndarray:
        """`n` points (x, y) along the outline, shape (n, 2), counter-clockwise in image axes."""
        t = np.linspace(0.0, 2 * np.pi, n, endpoint=False)
        ks = np.arange(2, 2 + len(self.amps))[:, None]
        r = 1.0 + (self.amps[:, None] * np.cos(ks * t + self.phases[:, None])).sum(axis=0)
        x, y = self.axes[0] * r * np.cos(t), self.axes[1] * r * np.sin(t)
        c, s = np.cos(self.angle), np.sin(self.angle)
        return np.stack([c * x - s * y + self.centre[0], s * x + c * y + self.centre[1]], axis=1)

    def moved(self, centre: tuple[float, float], scale: float = 1.0) -> _Blob:
        axes = (self.axes[0] * scale, self.axes[1] * scale)
        return _Blob(centre, axes, self.angle, self.amps, self.phases)


def _random_blob(rng, radius: float, aspect: float, roughness: float, angle: float) -> _Blob:
    """A blob of mean radius `radius` centred at the origin; `roughness` bounds the lowest harmonic."""
    ks = np.arange(2, 7)
    amps = rng.uniform(0.3, 1.0, size=len(ks)) * roughness / (ks - 1)
    phases = rng.uniform(0, 2 * np.pi, size=len(ks))
    axes = (radius * np.sqrt(aspect), radius / np.sqrt(aspect))
    return _Blob((0.0, 0.0), axes, angle, amps, phases)


def _fill(canvas: np.ndarray, pts: np.ndarray, value, antialias: bool = False) -> None:
    """Fill polygon `pts` (float x, y) into `canvas` with 1/16-pixel precision."""
    fixed = np.round(pts * 16).astype(np.int32)
    line = cv2.LINE_AA if antialias else cv2.LINE_8
    cv2.fillPoly(canvas, [fixed], value, lineType=line, shift=4)


def _smooth_noise(rng, height: int, width: int, cells: int) -> np.ndarray:
    """Low-frequency noise in [-1, 1], (H, W) float32: a coarse random grid upsampled bicubically."""
    grid = rng.uniform(-1, 1, size=(cells, cells)).astype(np.float32)
    return np.clip(cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC), -1, 1)


def _fine_noise(rng, height: int, width: int, sigma: float) -> np.ndarray:
    """Unit-variance-ish grain, (H, W) float32, correlated over about `sigma` pixels."""
    noise = rng.normal(0, 1, size=(height, width)).astype(np.float32)
    noise = cv2.GaussianBlur(noise, (0, 0), sigma)
    return noise / max(float(noise.std()), 1e-6)


def _jpeg_bytes(rgb: np.ndarray) -> bytes:
    buffer = BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def _check_args(count: int, size: int) -> None:
    if count < 0:
        raise SegpipeError(f"sample: count must be >= 0, got {count}")
    if size < MIN_SIZE:
        raise SegpipeError(f"sample: size must be >= {MIN_SIZE} pixels, got {size}")


# ----------------------------------------------------------------------------------------- lesions


def _skin(rng, height: int, width: int) -> np.ndarray:
    """Skin-tone background, (H, W, 3) float32: shading, patchy redness and fine pore texture."""
    tone = np.array([rng.uniform(200, 235), rng.uniform(145, 185), rng.uniform(120, 165)])
    shading = 1.0 + 0.07 * _smooth_noise(rng, height, width, 3)
    redness = 10.0 * _smooth_noise(rng, height, width, 5)
    skin = tone[None, None, :] * shading[..., None]
    skin[..., 1:] -= np.maximum(redness, 0)[..., None]
    return skin + 5.0 * _fine_noise(rng, height, width, 0.7)[..., None]


def _lesion_blob(rng, width: int, height: int, shape_type: str) -> _Blob:
    """The lesion outline, fitted inside the image and placed near the centre with jitter."""
    radius = np.sqrt(rng.uniform(0.07, 0.28) * width * height / np.pi)
    if shape_type == "circle":  # a near-circular lesion, annotated by a circle
        blob = _random_blob(rng, radius, 1.0, 0.03, 0.0)
    elif shape_type == "rectangle":  # an axis-aligned ellipse, so a box hugs it
        blob = _random_blob(rng, radius, rng.uniform(1.1, 1.5), 0.04, 0.0)
    else:
        blob = _random_blob(rng, radius, rng.uniform(1.0, 1.5), 0.3, rng.uniform(0, np.pi))
    pts, extent, margin = blob.points(256), np.array([width, height]), 4.0
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    scale = min(1.0, *((extent - 2 * margin) / (hi - lo)))
    # Jitter around the middle, then clamp so the outline never leaves the image.
    centre = rng.uniform(0.38 * extent, 0.62 * extent)
    centre = np.clip(centre, margin - lo * scale, extent - margin - hi * scale)
    return blob.moved((float(centre[0]), float(centre[1])), scale)


def _lesion_alpha(rng, blob: _Blob, height: int, width: int) -> np.ndarray:
    """Lesion opacity, (H, W) float32 in [0, 1], whose 0.5 contour follows the outline.

    The border is soft and uneven: a sharp and a blurred mask mixed by a smooth random weight.
    A symmetric blur keeps the 0.5 level on the outline, so the annotation stays honest.
    """
    hard = np.zeros((height, width), np.uint8)
    _fill(hard, blob.points(360), 255, antialias=True)
    hard_f = hard.astype(np.float32) / 255
    sharp = cv2.GaussianBlur(hard_f, (0, 0), 0.8)
    soft = cv2.GaussianBlur(hard_f, (0, 0), max(1.0, 0.05 * min(blob.axes)))
    weight = (_smooth_noise(rng, height, width, 4) + 1) / 2
    return sharp * (1 - weight) + soft * weight


def _lesion_colour(rng, alpha: np.ndarray) -> np.ndarray:
    """Pigment colour, (H, W, 3) float32: a darker core and brown / dark-brown mottling."""
    height, width = alpha.shape
    inside = (alpha > 0.5).astype(np.uint8)
    depth = cv2.distanceTransform(inside, cv2.DIST_L2, 3)
    depth = depth / max(float(depth.max()), 1.0)  # 0 on the border, 1 at the deepest point
    mottle = _smooth_noise(rng, height, width, int(rng.integers(6, 12)))
    t = np.clip(0.65 * np.sqrt(depth) + 0.3 * mottle + 0.1 * _fine_noise(rng, height, width, 1.0), 0, 1)
    # Melanin browns: green and blue as fractions of red keep the hue brown, never olive.
    light = rng.uniform(150, 185) * np.array([1.0, rng.uniform(0.6, 0.7), rng.uniform(0.42, 0.52)])
    dark = rng.uniform(45, 80) * np.array([1.0, rng.uniform(0.6, 0.7), rng.uniform(0.55, 0.85)])
    return light * (1 - t[..., None]) + dark * t[..., None]


def _vignette(rng, height: int, width: int) -> np.ndarray:
    """Dermoscope field of view, (H, W) float32 gain: 1 inside a circle, near 0 in the corners."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    dist = np.hypot(xx - width / 2, yy - height / 2)
    radius = rng.uniform(0.5, 0.58) * width
    edge = 0.05 * width
    return 0.06 + 0.94 * np.clip((radius - dist) / edge, 0, 1)


def _draw_hairs(rng, image: np.ndarray, lesion_centre: tuple[float, float]) -> None:
    """Thin dark curved hairs (quadratic Bezier curves), some of them crossing the lesion."""
    height, width = image.shape[:2]
    t = np.linspace(0, 1, 40)[:, None]
    for _ in range(int(rng.choice([0, 1, 2, 3, 4, 6], p=[0.2, 0.2, 0.2, 0.15, 0.15, 0.1]))):
        if rng.random() < 0.5:
            mid = np.array(lesion_centre) + rng.normal(0, 0.1 * width, 2)
        else:
            mid = rng.uniform([0, 0], [width, height])
        angle = rng.uniform(0, np.pi)
        direction = np.array([np.cos(angle), np.sin(angle)])
        half = rng.uniform(0.25, 0.6) * width
        bend = np.array([-direction[1], direction[0]]) * rng.normal(0, 0.15 * width)
        p0, p2, p1 = mid - direction * half, mid + direction * half, mid + bend
        curve = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2
        colour = tuple(float(c) for c in rng.uniform(25, 60) * np.array([1.0, 0.8, 0.7]))
        thickness = int(rng.choice([1, 1, 2]))
        fixed = np.round(curve * 16).astype(np.int32)
        cv2.polylines(image, [fixed], False, colour, thickness, cv2.LINE_AA, shift=4)


def _render_lesion(rng, width: int, height: int, blob: _Blob) -> np.ndarray:
    """The RGB uint8 image of one dermoscopy-like photograph with the lesion `blob`."""
    skin = _skin(rng, height, width)
    alpha = _lesion_alpha(rng, blob, height, width)[..., None]
    pigment = _lesion_colour(rng, alpha[..., 0])
    image = skin * (1 - alpha) + pigment * alpha
    if rng.random() < 0.4:
        image *= _vignette(rng, height, width)[..., None]
    image = np.ascontiguousarray(np.clip(image, 0, 255).astype(np.uint8))
    _draw_hairs(rng, image, blob.centre)
    return image


def _labelme_shape(rng, blob: _Blob, shape_type: str, width: int, height: int) -> dict:
    """A labelme 5.x shape for the lesion, its points clipped into the image, 2-decimal floats."""
    if shape_type == "circle":
        cx, cy = blob.centre
        points = np.array([[cx, cy], [cx + blob.axes[0], cy]])
    elif shape_type == "rectangle":
        outline = blob.points(360)
        points = np.array([outline.min(axis=0), outline.max(axis=0)])
    else:
        points = blob.points(int(rng.integers(24, 65)))
    points = np.clip(points, 0, [width - 1, height - 1])
    return {
        "label": "lesion",
        "points": [[round(float(x), 2), round(float(y), 2)] for x, y in points],
        "group_id": None,
        "description": "",
        "shape_type": shape_type,
        "flags": {},
        "mask": None,
    }


def _write_lesion(folder: Path, index: int, width: int, height: int, seed: int) -> None:
    """Render lesion `index` and write its JPEG and labelme JSON into `folder`."""
    rng = np.random.default_rng([seed, _STREAM_LESION, index])
    shape_type = _SHAPE_SLOTS.get(index % 20, "polygon")
    blob = _lesion_blob(rng, width, height, shape_type)
    jpeg = _jpeg_bytes(_render_lesion(rng, width, height, blob))
    stem = f"lesion_{index:03d}"
    embed = index % 20 in _EMBED_SLOTS
    annotation = {
        "version": LABELME_VERSION,
        "flags": {},
        "shapes": [_labelme_shape(rng, blob, shape_type, width, height)],
        "imagePath": f"{stem}.jpg",
        "imageData": base64.b64encode(jpeg).decode("ascii") if embed else None,
        "imageHeight": height,
        "imageWidth": width,
    }
    (folder / f"{stem}.jpg").write_bytes(jpeg)
    (folder / f"{stem}.json").write_text(json.dumps(annotation, indent=2, sort_keys=True) + "\n")


def make_lesions(out_dir: Path, count: int, size: int, seed: int) -> list[Path]:
    """Write `count` synthetic dermoscopy-like images + labelme JSON annotations into out_dir.

    Args:
        out_dir: folder for `lesion_NNN.jpg` and `lesion_NNN.json`; replaced whole, atomically (a
            folder holding anything else is refused).
        count: number of images.
        size: the longer side in pixels; images are landscape 4:3.
        seed: same seed and arguments give byte-identical files.
    Returns:
        The JSON paths, in id order.
    """
    _check_args(count, size)
    width, height = size, round(size * 3 / 4)
    with atomic_dir(Path(out_dir), owned=("lesion_*.jpg", "lesion_*.json")) as tmp:
        for index in range(count):
            _write_lesion(tmp, index, width, height, seed)
    return [Path(out_dir) / f"lesion_{index:03d}.json" for index in range(count)]


# ------------------------------------------------------------------------------------------ aerial

_CLASS = {name: index for index, name in enumerate(AERIAL_CLASSES)}
# Base image colour and grain amplitude per class, in AERIAL_CLASSES order. Vegetation is the
# grainiest and water the smoothest, so texture, not only hue, tells classes apart.
_BASE_RGB = np.array(
    [[120, 112, 104], [0, 0, 0], [205, 178, 138], [150, 154, 160], [78, 112, 58], [52, 104, 138]],
    np.float32,
)
_GRAIN = np.array([16, 6, 9, 5, 22, 3], np.float32)


def _hex_rgb(colour: str) -> tuple[int, int, int]:
    return tuple(int(colour[i : i + 2], 16) for i in (1, 3, 5))


def _paint_roads(rng, labels: np.ndarray, road_width: int | None) -> float:
    """Draw 1-3 straight road bands across the tile, 3-7% of its side wide or exactly
    `road_width` pixels; returns the main road's angle (radians)."""
    size = labels.shape[0]
    main = rng.uniform(0, np.pi)
    for road in range(int(rng.integers(1, 4))):
        angle = main if road == 0 else main + rng.choice([np.pi / 2, rng.uniform(0, np.pi)])
        through = rng.uniform(0.15 * size, 0.85 * size, 2)
        reach = 2 * size * np.array([np.cos(angle), np.sin(angle)])
        p0, p1 = np.round(through - reach).astype(int), np.round(through + reach).astype(int)
        # Drawn even when road_width is given, so the rest of the tile is laid out as by default.
        width = max(2, int(rng.uniform(0.03, 0.07) * size))
        if road_width is None:
            cv2.line(labels, tuple(map(int, p0)), tuple(map(int, p1)), _CLASS["road"], width, cv2.LINE_8)
        else:  # cv2's thick lines are wider than asked; pixel centres within width / 2 are exact
            labels[_band(labels.shape, through, angle, road_width)] = _CLASS["road"]
    return float(main)


def _band(shape: tuple[int, int], through: np.ndarray, angle: float, width: float) -> np.ndarray:
    """(H, W) bool: pixels whose centres lie within width / 2 of the line through `through` (x, y)
    at `angle`, so the band covers `width` pixels per unit of length at any angle."""
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32)
    across = (cols - through[0]) * -np.sin(angle) + (rows - through[1]) * np.cos(angle)
    return np.abs(across) < width / 2


def _place_buildings(rng, labels: np.ndarray, road_angle: float) -> list[tuple[np.ndarray, np.ndarray]]:
    """Add rotated rectangular buildings on free land; returns (corners, roof RGB) per building."""
    size = labels.shape[0]
    target, placed = int(rng.integers(3, 12)), []
    for _ in range(60):
        if len(placed) == target:
            break
        # Buildings mostly line up with the main road, like a street grid.
        angle = np.degrees(road_angle) if rng.random() < 0.7 else rng.uniform(0, 180)
        box = (tuple(rng.uniform(0, size, 2)), tuple(rng.uniform(0.05, 0.16, 2) * size), angle)
        corners = cv2.boxPoints(box)
        footprint = np.zeros_like(labels)
        _fill(footprint, corners, 1)
        under = labels[footprint == 1]
        if under.size == 0 or np.mean(under != _CLASS["land"]) > 0.05:
            continue
        labels[footprint == 1] = _CLASS["building"]
        roof = rng.choice([[235, 232, 225], [200, 195, 190], [170, 90, 70], [120, 125, 135]])
        placed.append((corners, roof + rng.normal(0, 8, 3)))
    return placed


def _aerial_layout(rng, size: int, road_width: int | None = None) -> tuple[np.ndarray, list]:
    """Class index map (H, W) uint8 of one tile, plus the buildings' corners and roof colours."""
    labels = np.full((size, size), _CLASS["land"], np.uint8)
    for _ in range(int(rng.choice([0, 1, 2], p=[0.4, 0.45, 0.15]))):
        blob = _random_blob(rng, rng.uniform(0.12, 0.3) * size, rng.uniform(1, 2), 0.2, rng.uniform(0, np.pi))
        _fill(labels, blob.moved(tuple(rng.uniform(0, size, 2))).points(128), _CLASS["water"])
    road_angle = _paint_roads(rng, labels, road_width)
    for _ in range(int(rng.integers(1, 5))):
        blob = _random_blob(rng, rng.uniform(0.04, 0.11) * size, rng.uniform(1, 2), 0.4, rng.uniform(0, np.pi))
        _fill(labels, blob.moved(tuple(rng.uniform(0.1, 0.9, 2) * size)).points(64), _CLASS["vegetation"])
    buildings = _place_buildings(rng, labels, road_angle)
    for _ in range(int(rng.choice([0, 1, 2], p=[0.3, 0.5, 0.2]))):
        box = (tuple(rng.uniform(0, size, 2)), tuple(rng.uniform(0.04, 0.12, 2) * size), rng.uniform(0, 90))
        _fill(labels, cv2.boxPoints(box), _CLASS["unlabeled"])
    return labels, buildings


def _render_aerial(rng, labels: np.ndarray, buildings: list) -> np.ndarray:
    """The RGB uint8 tile for a class map: per-class colour and grain, shadows, roofs, sensor blur."""
    size = labels.shape[0]
    shading = 1.0 + 0.08 * _smooth_noise(rng, size, size, 4)
    grain = _fine_noise(rng, size, size, 1.2)
    image = _BASE_RGB[labels] * shading[..., None] + (_GRAIN[labels] * grain)[..., None]
    image += rng.normal(0, 6, 3).astype(np.float32)  # per-tile colour cast
    sun = rng.uniform(0.01, 0.025, 2) * size * rng.choice([-1, 1], 2)
    shadow = np.zeros_like(labels)
    for corners, _ in buildings:
        _fill(shadow, corners + sun, 1)
    image[(shadow == 1) & (labels != _CLASS["building"])] *= 0.55
    image = np.ascontiguousarray(image)
    for corners, roof in buildings:
        _fill(image, corners, tuple(float(c) for c in roof))
    roof_grain = (labels == _CLASS["building"]) * _GRAIN[_CLASS["building"]] * grain
    image = cv2.GaussianBlur(image + roof_grain[..., None], (0, 0), 0.7)
    return np.clip(image + rng.normal(0, 3, image.shape), 0, 255).astype(np.uint8)


def make_aerial(out_dir: Path, count: int, size: int, seed: int, road_width: int | None = None) -> list[Path]:
    """Write `count` synthetic aerial tiles and their RGB colour-coded masks.

    Args:
        out_dir: tiles go to `out_dir/images/aerial_NNN.jpg`, masks (exact AERIAL_COLORS, no
            antialiasing) to `out_dir/masks/aerial_NNN.png`; out_dir is replaced whole, atomically
            (a folder holding anything but images/ and masks/ is refused).
        count: number of tiles.
        size: side of the square tiles in pixels.
        seed: same seed and arguments give byte-identical files.
        road_width: roads exactly this many pixels wide (thin structures that shrinking loses);
            None: 3-7% of the side, as in the default sample.
    Returns:
        The image paths, in id order.
    """
    _check_args(count, size)
    if road_width is not None and road_width < 1:
        raise SegpipeError(f"sample: road width must be >= 1 pixel, got {road_width}")
    palette = np.array([_hex_rgb(AERIAL_COLORS[name]) for name in AERIAL_CLASSES], np.uint8)
    with atomic_dir(Path(out_dir), owned=(IMAGES, MASKS)) as tmp:
        (tmp / IMAGES).mkdir()
        (tmp / MASKS).mkdir()
        for index in range(count):
            rng = np.random.default_rng([seed, _STREAM_AERIAL, index])
            labels, buildings = _aerial_layout(rng, size, road_width)
            stem = f"aerial_{index:03d}"
            (tmp / IMAGES / f"{stem}.jpg").write_bytes(_jpeg_bytes(_render_aerial(rng, labels, buildings)))
            Image.fromarray(palette[labels]).save(tmp / MASKS / f"{stem}.png", format="PNG")
    return [Path(out_dir) / IMAGES / f"aerial_{index:03d}.jpg" for index in range(count)]
