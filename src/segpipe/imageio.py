"""Reading images and writing masks and output folders safely.

Every stage reads pictures through `read_image` (EXIF orientation applied, truncated files and
decompression bombs refused with the file's name), or `read_image_for` when the picture is about
to be shrunk (large JPEGs then decode at reduced scale), and publishes its output folder through
`atomic_dir`, so a failed run leaves the previous output untouched. `check_apart` refuses an output
folder that is, holds or lies inside an input before anything is written, and the temporary files
of a killed run (named after its process id) are cleared by the next one (`remove_stale_temps`).
"""

from __future__ import annotations

import contextlib
import fnmatch
import io
import logging
import math
import os
import re
import shutil
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageOps

from segpipe.errors import SegpipeError, sigterm_unwinds
from segpipe.palette import mask_image

log = logging.getLogger(__name__)

IGNORE_INDEX = 255
"""Mask value of pixels left out of the loss and the metrics (letterbox padding, unlabelled areas)."""

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
"""The image files every stage reads from a folder (convert, predict FOLDER, a dataset's images/)."""

# Pillow warns above this many pixels and raises above twice as many; we refuse above it outright,
# which still admits a 16k x 10k aerial mosaic.
MAX_IMAGE_PIXELS = 178_956_970


@contextlib.contextmanager
def _decoding(name: str) -> Iterator[None]:
    """Turn every way an image can be broken into a SegpipeError naming it."""
    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise SegpipeError(f"{name}: refused as a possible decompression bomb ({exc})") from exc
    except FileNotFoundError as exc:
        raise SegpipeError(f"{name}: image file not found") from exc
    except Image.UnidentifiedImageError:
        # Pillow's own message names an in-memory buffer object, which tells a person nothing.
        raise SegpipeError(f"{name}: not an image (no format Pillow reads); send a JPEG, PNG, BMP, TIFF or WebP file") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise SegpipeError(f"{name}: cannot read image ({exc}); is the file truncated or not an image?") from exc


def _open_checked(source: Path | bytes, name: str) -> Image.Image:
    """Open and fully decode an image; errors name it."""
    with _decoding(name):
        image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
        image.load()  # decode now: a truncated JPEG only fails here
    _note_pages(image, name)
    return image


def _note_pages(image: Image.Image, name: str) -> None:
    """Warn that only the first page is read of a multi-page TIFF (or an animated image).

    The first page is used rather than the file refused: it is the full-resolution image of a
    pyramidal or thumbnailed TIFF, the common case, and the warning names the file for a stack.
    """
    pages = getattr(image, "n_frames", 1)
    if pages > 1:
        log.warning("%s: has %d pages (frames); only the first is used. Save each page you need as its own file", name, pages)


def read_image(source: Path | bytes, name: str | None = None) -> np.ndarray:
    """Read an image file (or encoded bytes) as an (H, W, 3) uint8 RGB array, EXIF orientation applied.

    Args:
        source: a path, or the encoded bytes of an image (labelme's imageData).
        name: how to call the image in error messages (defaults to the path).
    """
    name = name or str(source)
    return to_rgb(_open_checked(source, name), name)


# Pillow's single-channel modes wider than 8 bits; `convert("RGB")` would clip them at 255.
_WIDE_INTEGER_MODES = {"I;16": np.uint16, "I;16L": np.uint16, "I;16B": np.uint16, "I;16N": np.uint16, "I": np.int32}
# TIFF tags that say what Pillow's 32-bit mode "I" really holds (it also opens int16 and uint16 as "I").
_BITS_PER_SAMPLE, _SAMPLE_FORMAT, _SIGNED = 258, 339, 2


def _integer_type(image: Image.Image) -> type[np.integer]:
    """The integer type the file stores: Pillow's mode "I" stands for several."""
    if image.mode != "I":
        return _WIDE_INTEGER_MODES[image.mode]
    if image.format == "PNG":  # a 16-bit gray PNG, in Pillow versions that opened it as "I"
        return np.uint16
    tags = getattr(image, "tag_v2", {})
    bits, sample_format = (tags.get(tag) for tag in (_BITS_PER_SAMPLE, _SAMPLE_FORMAT))
    bits = bits[0] if isinstance(bits, tuple) else bits
    signed = (sample_format[0] if isinstance(sample_format, tuple) else sample_format) == _SIGNED
    return {8: (np.uint8, np.int8), 16: (np.uint16, np.int16)}.get(bits, (np.uint32, np.int32))[signed]


def to_rgb(image: Image.Image, name: str) -> np.ndarray:
    """A decoded image as (H, W, 3) uint8 RGB, EXIF orientation applied; 16- and 32-bit gray images
    are rescaled, never clipped.

    Integer images (16-bit PNG/TIFF, 16- and 32-bit TIFF) are scaled by their type's full range, so
    one value maps to one gray level in every image: uint16 v -> round(v / 257), int32 v ->
    round((v + 2**31) * 255 / (2**32 - 1)); one whose values all fall into one gray level that way
    is refused rather than returned flat. A float image has no such range: its own minimum and
    maximum become 0 and 255 (a constant image becomes 0); NaN or infinite pixels are refused.
    Every other mode (8-bit, palette, 48-bit RGB, which Pillow reads as 8-bit RGB) is Pillow's RGB.
    """
    # The file's own type is read before the EXIF turn, whose copy keeps no format or TIFF tags.
    dtype = _integer_type(image) if image.mode in _WIDE_INTEGER_MODES else None
    image = ImageOps.exif_transpose(image)
    if dtype is not None:
        info = np.iinfo(dtype)
        values = np.asarray(image).astype(np.float64)
        gray = np.rint((values - info.min) * (255 / (int(info.max) - int(info.min))))
        if values.size and gray.min() == gray.max() and values.min() != values.max():
            raise SegpipeError(
                f"{name}: its values {values.min():g}..{values.max():g} use so little of the {np.dtype(dtype).name} "
                "range that, rescaled by it to 8 bits, the picture is one flat gray; save it as 16-bit or float"
            )
    elif image.mode == "F":
        values = np.asarray(image).astype(np.float64)
        if not np.isfinite(values).all():
            raise SegpipeError(
                f"{name}: a float image with NaN or infinite pixels, which have no gray level; "
                "replace them (e.g. by the image's minimum) and save it again"
            )
        low, high = (values.min(), values.max()) if values.size else (0.0, 0.0)
        gray = np.rint((values - low) * (255 / (high - low))) if high > low else np.zeros_like(values)
    else:
        return np.asarray(image.convert("RGB"))
    return np.repeat(gray.astype(np.uint8)[..., None], 3, axis=2)


# EXIF orientations that turn the picture by 90 degrees (stored width is the shown height).
_TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)


def read_image_for(
    source: Path, *, fit: tuple[int, int] | None = None, scale: float | None = None
) -> tuple[np.ndarray, tuple[int, int]]:
    """Read an image that is about to be shrunk, decoding no more detail than the result can show.

    A JPEG at least twice as large as the target on every side is decoded at 1/2, 1/4 or 1/8
    scale (Pillow's draft mode: the DCT is scaled, so most of the decoding work is skipped), and
    every side stays at least as large as the target's; the caller then resizes exactly. Other
    formats, and JPEGs close to the target size, are decoded whole, exactly as `read_image`.

    Args:
        source: an image file.
        fit: the (h, w) canvas the image will be letterboxed into (scaled to fit inside it), or
        scale: the factor its sides will be resized by.
    Returns:
        (pixels, (H, W)): the (h, w, 3) uint8 RGB pixels, EXIF orientation applied, and the
        size of the full image, which is what any result must be mapped back to.
    """
    if (fit is None) == (scale is None):
        raise SegpipeError("read_image_for needs exactly one of fit or scale")
    with _decoding(str(source)):
        image = Image.open(source)
        turned = image.getexif().get(ExifTags.Base.Orientation) in _TRANSPOSING_ORIENTATIONS
        stored_w, stored_h = image.size
        full_hw = (stored_w, stored_h) if turned else (stored_h, stored_w)
        factor = scale if scale is not None else min(fit[0] / full_hw[0], fit[1] / full_hw[1])
        if factor <= 0.5:  # draft mode reduces by 2 at least; closer targets decode whole
            needed_h, needed_w = (max(1, math.ceil(side * factor)) for side in full_hw)
            image.draft("RGB", (needed_h, needed_w) if turned else (needed_w, needed_h))
        image.load()
    _note_pages(image, str(source))
    return to_rgb(image, str(source)), full_hw


def read_mask(path: Path) -> Image.Image:
    """Open a mask image as Pillow decoded it (mode kept: 1, L, P, RGB, ...); errors name the file."""
    return _open_checked(path, str(path))


def read_class_mask(path: Path) -> np.ndarray:
    """Read a converted mask (one byte per pixel, the class id; palette or grayscale PNG)."""
    image = read_mask(path)
    if image.mode not in ("L", "P"):
        raise SegpipeError(f"{path}: expected a class-id mask (mode L or P), got mode {image.mode}")
    return np.asarray(image)


def write_mask(path: Path, mask: np.ndarray) -> None:
    """Write a class-id mask (uint8, 255 = ignore) as a palette PNG."""
    mask_image(mask).save(path, format="PNG", optimize=False)


def list_images(folder: Path) -> list[Path]:
    """Image files directly in `folder`, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def broken_links(paths: Iterable[Path]) -> list[str]:
    """One problem line per symlink among `paths` that leads to no file (dangling or looping)."""
    problems = []
    for path in paths:
        if path.is_symlink() and not path.exists():
            problems.append(
                f"{path}: a symlink to {os.readlink(path)}, which does not exist (or links back to itself); "
                "restore its target or remove the link"
            )
    return problems


def check_apart(outputs: Mapping[str, Path], inputs: Mapping[str, Path] | Iterable[tuple[str, Path]]) -> None:
    """Refuse an output that is an input, holds one or lies inside one (symlinks resolved).

    Call it before anything is written: publishing such an output folder would delete or
    overwrite the inputs, and a file written into an input folder would be read as input next time.
    `outputs` and `inputs` map how the user named each path (an argument or option) to the path;
    `inputs` may also be (name, path) pairs, for several paths under one name.
    """
    pairs = list(inputs.items() if isinstance(inputs, Mapping) else inputs)
    for out_name, out in outputs.items():
        target = Path(out).resolve()
        for in_name, source in pairs:
            source_path = Path(source).resolve()
            if target == source_path:
                relation = "is"
            elif target in source_path.parents:
                relation = "contains"
            elif source_path in target.parents:
                relation = "lies inside"
            else:
                continue
            raise SegpipeError(
                f"the output {out} ({out_name}) {relation} the input {source} ({in_name}): writing there "
                f"could delete or overwrite the input; choose an output path that neither is, holds nor "
                f"lies inside {source}"
            )


@contextlib.contextmanager
def atomic_dir(target: Path, owned: Sequence[str] | None = None) -> Iterator[Path]:
    """Yield an empty temporary folder beside `target`; on success it replaces `target` whole.

    On any error (SIGTERM included) the temporary folder is removed and `target` is left exactly as
    it was, so an output folder is always either the complete new result or the complete old one.
    Temporary folders of killed runs beside `target` are cleared first.

    Args:
        target: the folder to publish.
        owned: glob patterns of every name the caller writes into `target`; an existing `target`
            holding anything else is refused rather than replaced, so nothing but the caller's own
            earlier output is ever deleted. None: no such check.
    """
    target = Path(target)
    _check_replaceable(target, owned)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(target.parent, target.name)
    with sigterm_unwinds():
        # The process id in the name tells a later run whether its owner is still alive.
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-{os.getpid()}-", dir=target.parent))
        tmp.chmod(0o755)  # mkdtemp makes it private; the published folder should read like any other
        try:
            yield tmp
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        if target.exists():
            os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)


def _check_replaceable(target: Path, owned: Sequence[str] | None) -> None:
    """Refuse to replace a file, the working folder (or one holding it), or a folder of foreign files."""
    resolved, here = target.resolve(), Path.cwd().resolve()
    if resolved == here or resolved in here.parents:
        raise SegpipeError(f"{target}: is (or holds) the current folder, which writing this output would replace; name a subfolder")
    if target.exists() and not target.is_dir():
        raise SegpipeError(f"{target}: is a file, not an output folder; name a folder (this one would be replaced)")
    if owned is None or not target.is_dir():
        return
    foreign = sorted(p.name for p in target.iterdir() if not any(fnmatch.fnmatch(p.name, g) for g in owned))
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise SegpipeError(
            f"{target}: holds {shown}, which this command did not write; the folder is replaced whole, "
            "so name a new or empty folder (or move those files away first)"
        )


# `.NAME.tmp-PID` (atomic_write), `.NAME.tmp-PID-XXXX` and `.NAME.old-PID` (atomic_dir).
_TEMP_NAME = re.compile(r"\.(?P<name>.+)\.(?P<kind>tmp|old)-(?P<pid>\d+)(?:-[^/]*)?")


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists on this machine (one of another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:  # e.g. an id out of range: no such process
        return False
    return True


def remove_stale_temps(folder: Path, name: str | None = None) -> list[Path]:
    """Clear what `atomic_write` and `atomic_dir` left in `folder` when their process was killed.

    Temporary files and folders whose owning process is gone are deleted; an `.NAME.old-PID`
    folder (the previous output, moved aside the instant before a killed run would have
    published) is put back as NAME when NAME is missing. Entries of live processes are left alone.

    Args:
        folder: where to look.
        name: only the temporaries of this output name; None: of every name.
    Returns:
        The paths removed or restored.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    cleared = []
    for entry in sorted(folder.iterdir()):
        match = _TEMP_NAME.fullmatch(entry.name)
        if match is None or (name is not None and match["name"] != name) or pid_alive(int(match["pid"])):
            continue
        final = folder / match["name"]
        if match["kind"] == "old" and not final.exists():
            os.replace(entry, final)
        elif entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        cleared.append(entry)
    return cleared


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Create `path` by `write(tmp)` on a temporary file beside it, then a rename.

    The file is whole or absent (or, if it existed, still the old one): a crash, a full disk or an
    interrupt in `write` leaves no half-written file and no temporary file behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # pid and thread: two processes or threads writing one path never share a temporary file.
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: Path, text: str) -> None:
    """Write a text file through a temporary file and a rename."""
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
