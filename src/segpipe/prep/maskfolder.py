"""The image/mask-folder input format: `images/X.jpg` with its mask `masks/X<mask_suffix>.png`.

`data.mask_colors` says which pixel value means which class, in one of two ways:

* all integers (0-255): masks are compared as gray levels. A 1-bit mask reads as 0/255, a gray
  mask as its value, a palette mask as its palette *index* (as in Pascal VOC), and an RGB mask is
  accepted when it is gray stored as RGB (R == G == B).
* any "#RRGGBB" string: every mask is converted to RGB (palette masks through their palette) and
  compared by colour; integers then stand for gray colours (v, v, v).

JPEG masks are lossy, so each pixel is snapped to the nearest configured value or colour within
JPEG_TOLERANCE (per channel) and counted as unknown beyond it. Lossless masks must match exactly.
Colour JPEGs saved with chroma subsampling (the default) blur colours across class borders beyond
any tolerance; those border pixels come out unknown, so convert such masks to PNG or set
`unknown_colors: ignore`. Gray JPEG masks have no such problem.
Pixels of unknown value are reported for all files at once (or painted 255 with
`unknown_colors: ignore`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from segpipe.config import mask_color_keys
from segpipe.errors import SegpipeError
from segpipe.imageio import IGNORE_INDEX, IMAGE_SUFFIXES, broken_links, list_images, read_image, read_mask
from segpipe.layout import IMAGES, MASKS

MASK_SUFFIXES = (".png", ".bmp", ".jpg", ".jpeg", ".tif", ".tiff")  # tried in this order
JPEG_TOLERANCE = 40
UNKNOWN = -1


@dataclass(frozen=True)
class ColorMap:
    """data.mask_colors, checked.

    Attributes:
        gray: True when every value is an integer: masks are compared as gray levels / palette indices.
        keys: the gray levels, or the colours packed as 0xRRGGBB, sorted.
        ids: the class id of each key.
    """

    gray: bool
    keys: tuple[int, ...]
    ids: tuple[int, ...]

    def describe(self, key: int) -> str:
        """A pixel value as the user writes it in params.yaml."""
        return str(key) if self.gray else f"#{key:06x}"


def parse_mask_colors(mask_colors: dict[str, int | str], classes: tuple[str, ...]) -> ColorMap:
    """Check data.mask_colors against base.classes (as loading params does); errors name the key."""
    try:
        gray, by_key = mask_color_keys(mask_colors, classes)
    except ValueError as exc:
        raise SegpipeError(str(exc)) from None
    keys = tuple(sorted(by_key))
    return ColorMap(gray, keys, tuple(classes.index(by_key[k]) for k in keys))


def find_pairs(input_dir: Path, mask_suffix: str) -> tuple[list[tuple[Path, Path]], list[str]]:
    """Pair each image of `input_dir/images` with its mask in `input_dir/masks`.

    Returns the (image, mask) pairs and one problem line per image without a mask and per mask
    without an image, so the caller can report them together with every other problem.
    """
    images_dir, masks_dir = Path(input_dir) / IMAGES, Path(input_dir) / MASKS
    for folder in (images_dir, masks_dir):
        if not folder.is_dir():
            raise SegpipeError(
                f"{folder}: folder not found; data.format 'masks' expects {input_dir}/images/ and {input_dir}/masks/"
            )
    mask_files = sorted(p for p in masks_dir.iterdir() if p.suffix.lower() in MASK_SUFFIXES)
    broken = broken_links([*sorted(p for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES), *mask_files])
    images = list_images(images_dir)
    if not images:
        raise SegpipeError("\n".join([f"{images_dir}: no images found (looked for {', '.join(IMAGE_SUFFIXES)} files)", *broken]))
    masks = {p.name.lower(): p for p in mask_files if p.is_file()}
    pairs, problems, used = [], broken, set()
    for image in images:
        names = [f"{image.stem}{mask_suffix}{suffix}".lower() for suffix in MASK_SUFFIXES]
        found = [n for n in names if n in masks]
        if not found:
            problems.append(f"{image}: no mask found (expected {masks_dir / (image.stem + mask_suffix)}.png or .bmp/.jpg/.tif)")
            continue
        used.update(found)
        pairs.append((image, masks[found[0]]))
        for extra in found[1:]:
            problems.append(f"{masks[extra]}: a second mask for {image.name} ({masks[found[0]].name} is the first); remove one")
    for name in sorted(set(masks) - used):
        problems.append(
            f"{masks[name]}: mask without an image (its image would be {images_dir}/<name>.jpg with data.mask_suffix {mask_suffix!r} removed)"
        )
    return pairs, problems


def mask_suffix_hint(input_dir: Path, mask_suffix: str) -> str | None:
    """A hint naming `data.mask_suffix` when every mask left without an image is named after an
    image plus one and the same suffix (ISIC's `_segmentation`, PH2's `_lesion`, or "" when the
    masks share the images' names but a suffix is set); None otherwise."""
    images_dir, masks_dir = Path(input_dir) / IMAGES, Path(input_dir) / MASKS
    stems = [p.stem for p in list_images(images_dir)]
    wanted = {(stem + mask_suffix).lower() for stem in stems}
    unmatched = [
        p.stem for p in masks_dir.iterdir()
        if p.suffix.lower() in MASK_SUFFIXES and p.is_file() and p.stem.lower() not in wanted
    ]
    suffixes = {common_suffix(stem, stems) for stem in unmatched}
    if len(suffixes) != 1 or None in suffixes:
        return None
    suffix = suffixes.pop()
    if suffix == mask_suffix:
        return None
    setting = f"data.mask_suffix: {suffix or chr(34) * 2}"
    return (
        f"hint: all {len(unmatched)} masks without an image are named <image name>{suffix} "
        f"(data.mask_suffix is {mask_suffix!r}); set `{setting}` in params.yaml, or try it with "
        f"`dvc exp run -S 'data.mask_suffix={suffix}'`"
    )


def common_suffix(mask_stem: str, image_stems: list[str]) -> str | None:
    """What `mask_stem` adds to the longest image stem it starts with (case-insensitive), or None."""
    prefixes = [stem for stem in image_stems if mask_stem.lower().startswith(stem.lower())]
    return mask_stem[len(max(prefixes, key=len)):] if prefixes else None


def load_pair(image_path: Path, mask_path: Path, colors: ColorMap) -> tuple[np.ndarray, np.ndarray, dict[int, int]]:
    """Read an image and its mask as (RGB pixels, class ids, unknown value -> pixel count).

    Both get their EXIF orientation applied; unknown pixels are IGNORE_INDEX in the class ids.
    """
    pixels = read_image(image_path)
    mask = read_mask(mask_path)
    lossy = mask.format == "JPEG"
    mask = ImageOps.exif_transpose(mask)
    if mask.size != (pixels.shape[1], pixels.shape[0]):
        raise SegpipeError(
            f"{mask_path}: the mask is {mask.width}x{mask.height} but its image {image_path.name} is "
            f"{pixels.shape[1]}x{pixels.shape[0]} (after EXIF rotation); masks must match their image pixel for pixel"
        )
    ids, unknown = mask_to_ids(mask, colors, str(mask_path), lossy=lossy)
    return pixels, ids, unknown


def mask_to_ids(mask: Image.Image, colors: ColorMap, name: str, lossy: bool = False) -> tuple[np.ndarray, dict[int, int]]:
    """Map a mask image to (H, W) uint8 class ids and count the pixels of each unknown value.

    Args:
        mask: the mask as Pillow opened it (mode 1, L, P, I;16, RGB, RGBA, ...).
        colors: the parsed data.mask_colors.
        name: the mask's file, for error messages.
        lossy: snap values within JPEG_TOLERANCE (a JPEG mask) instead of matching exactly.
    """
    if colors.gray:
        values = _gray_values(mask, name, lossy)
        looked_up = _lookup_gray(values, colors, lossy)
    else:
        values = _packed_rgb(np.asarray(mask.convert("RGB")))
        looked_up = _lookup_color(values, colors, lossy)
    unknown = looked_up == UNKNOWN
    found, counts = np.unique(values[unknown], return_counts=True)
    ids = np.where(unknown, IGNORE_INDEX, looked_up).astype(np.uint8)
    return ids, {int(v): int(c) for v, c in zip(found, counts)}


def _gray_values(mask: Image.Image, name: str, lossy: bool) -> np.ndarray:
    """The gray level (or palette index) of each pixel, as an (H, W) integer array."""
    if mask.mode == "1":
        return np.asarray(mask).astype(np.uint8) * 255
    if mask.mode in ("L", "P") or mask.mode.startswith("I;16") or mask.mode == "I":
        return np.asarray(mask)
    if mask.mode in ("LA", "PA"):
        return np.asarray(mask)[..., 0]
    if mask.mode == "F":
        raise SegpipeError(f"{name}: a floating-point mask cannot hold class values; save it as 8-bit PNG")
    if lossy:  # JPEG noise makes R, G and B differ slightly
        return np.asarray(mask.convert("L"))
    rgb = np.asarray(mask.convert("RGB"))
    colored = (rgb[..., 0] != rgb[..., 1]) | (rgb[..., 1] != rgb[..., 2])
    if colored.any():
        y, x = np.argwhere(colored)[0]
        raise SegpipeError(
            f"{name}: the mask has colours (e.g. #{_packed_rgb(rgb[y, x]):06x} at x={x}, y={y}) but "
            "data.mask_colors gives gray values; give each class its colour as '#RRGGBB'"
        )
    return rgb[..., 0]


def _packed_rgb(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 colours as 0xRRGGBB integers."""
    rgb = rgb.astype(np.uint32)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def _lookup_gray(values: np.ndarray, colors: ColorMap, lossy: bool) -> np.ndarray:
    """Class id per pixel through a 256-entry table; values above 255 (16-bit masks) are unknown."""
    table = np.full(256, UNKNOWN, dtype=np.int16)
    if lossy:
        levels = np.arange(256)
        distance = np.abs(levels[:, None] - np.array(colors.keys)[None, :])  # (256, K)
        nearest = distance.argmin(axis=1)
        close = distance[levels, nearest] <= JPEG_TOLERANCE
        table[close] = np.array(colors.ids)[nearest[close]]
    else:
        table[list(colors.keys)] = colors.ids
    if values.dtype == np.uint8:
        return table[values]
    inside = (values >= 0) & (values <= 255)
    return np.where(inside, table[np.clip(values, 0, 255)], UNKNOWN)


def _lookup_color(packed: np.ndarray, colors: ColorMap, lossy: bool) -> np.ndarray:
    """Class id per pixel of 0xRRGGBB colours: exact by binary search, or nearest within tolerance."""
    keys, ids = np.array(colors.keys, dtype=np.uint32), np.array(colors.ids, dtype=np.int16)
    if not lossy:
        slot = np.clip(np.searchsorted(keys, packed), 0, len(keys) - 1)
        return np.where(keys[slot] == packed, ids[slot], UNKNOWN)
    channels = [((packed >> shift) & 255).astype(np.int16) for shift in (16, 8, 0)]  # 3 x (H, W)
    found = np.full(packed.shape, UNKNOWN, dtype=np.int16)
    best = np.full(packed.shape, JPEG_TOLERANCE + 1, dtype=np.int16)
    for key, class_id in zip(keys.tolist(), ids.tolist()):
        # the largest per-channel difference; one key at a time keeps memory at a few (H, W) arrays
        distance = np.abs(channels[0] - (key >> 16))
        np.maximum(distance, np.abs(channels[1] - ((key >> 8) & 255)), out=distance)
        np.maximum(distance, np.abs(channels[2] - (key & 255)), out=distance)
        closer = distance < best
        found[closer], best[closer] = class_id, distance[closer]
    return found


def unknown_values_report(per_file: list[tuple[str, dict[int, int]]], colors: ColorMap, limit: int = 20) -> list[str]:
    """Lines listing each unknown mask value with its pixel count and (up to 5 of) its files."""
    totals: dict[int, int] = {}
    files: dict[int, list[str]] = {}
    for name, unknown in per_file:
        for value, count in unknown.items():
            totals[value] = totals.get(value, 0) + count
            files.setdefault(value, []).append(name)
    if not totals:
        return []
    what = "gray values (palette indices for palette masks)" if colors.gray else "colours"
    known = ", ".join(colors.describe(k) for k in colors.keys)
    lines = [f"masks contain {what} that data.mask_colors does not map (known: {known}):"]
    ranked = sorted(totals, key=lambda v: -totals[v])
    for value in ranked[:limit]:
        shown = ", ".join(files[value][:5]) + (f" and {len(files[value]) - 5} more" if len(files[value]) > 5 else "")
        lines.append(f"  {colors.describe(value)}: {totals[value]} pixels in {shown}")
    if len(ranked) > limit:
        lines.append(f"  ... and {len(ranked) - limit} more values")
    lines.append("add them to data.mask_colors, or set data.unknown_colors: ignore to paint them 255 (ignored in training)")
    return lines
