"""Reading images and writing masks and output folders safely.

Every stage reads pictures through `read_image` (EXIF orientation applied, truncated files and
decompression bombs refused with the file's name) and publishes its output folder through
`atomic_dir`, so a failed run leaves the previous output untouched.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from segpipe.errors import SegpipeError
from segpipe.palette import mask_image

IGNORE_INDEX = 255
"""Mask value of pixels left out of the loss and the metrics (letterbox padding, unlabelled areas)."""

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")

# Pillow warns above this many pixels and raises above twice as many; we refuse above it outright,
# which still admits a 16k x 10k aerial mosaic.
MAX_IMAGE_PIXELS = 178_956_970


def _open_checked(source: Path | bytes, name: str) -> Image.Image:
    """Open and fully decode an image, turning every way it can be broken into a SegpipeError."""
    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
            image.load()  # decode now: a truncated JPEG only fails here
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise SegpipeError(f"{name}: refused as a possible decompression bomb ({exc})") from exc
    except FileNotFoundError as exc:
        raise SegpipeError(f"{name}: image file not found") from exc
    except Image.UnidentifiedImageError:
        # Pillow's own message names an in-memory buffer object, which tells a person nothing.
        raise SegpipeError(f"{name}: not an image (no format Pillow reads); send a JPEG, PNG, BMP or TIFF file") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise SegpipeError(f"{name}: cannot read image ({exc}); is the file truncated or not an image?") from exc
    return image


def read_image(source: Path | bytes, name: str | None = None) -> np.ndarray:
    """Read an image file (or encoded bytes) as an (H, W, 3) uint8 RGB array, EXIF orientation applied.

    Args:
        source: a path, or the encoded bytes of an image (labelme's imageData).
        name: how to call the image in error messages (defaults to the path).
    """
    name = name or str(source)
    image = ImageOps.exif_transpose(_open_checked(source, name))
    return np.asarray(image.convert("RGB"))


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


@contextlib.contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside `target`; on success it replaces `target` whole.

    On any error the temporary folder is removed and `target` is left exactly as it was, so an output
    folder is always either the complete new result or the complete old one.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
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


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Create `path` by `write(tmp)` on a temporary file beside it, then a rename.

    The file is whole or absent (or, if it existed, still the old one): a crash, a full disk or an
    interrupt in `write` leaves no half-written file and no temporary file behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: Path, text: str) -> None:
    """Write a text file through a temporary file and a rename."""
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
