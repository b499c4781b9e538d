"""The decoded cache: each sample decoded once, shaped as training reads it, kept on local disk.

Decoding a 3000 x 2000 JPEG and shrinking it costs tens of milliseconds; reading the shaped
uint8 result back costs a fraction of one. So every (image, mask) pair is decoded once per
shaping into a small file, and every later epoch, run and experiment reads that file.

    cache = DecodedCache.default()                 # <project root>/.cache/segpipe, or $SEGPIPE_CACHE_DIR
    image, mask = cache.letterboxed(sample, 512)   # (512, 512, 3) and (512, 512) uint8
    image, mask = cache.scaled(sample, 0.5)        # (round(H * 0.5), round(W * 0.5), 3) and (..., ...) uint8
    cache.warm(samples, Letterboxed(512))          # build every missing entry, on all cores

`letterboxed(sample, size)` is `Letterbox` into a size x size canvas: image padding is the
ImageNet mean colour, mask padding 255 (ignored). `scaled(sample, scale)` is the whole image
resized by `scale` (1.0 = native size, 0.5 = half; each side rounded, at least 1 pixel), the
image by area averaging when shrinking, the mask by nearest neighbour; sizes vary per sample.
Both return the cached arrays as (H, W, 3) RGB and (H, W) class ids, writable, owned by the
caller. Large JPEGs are decoded at reduced scale (`imageio.read_image_for`) before the exact
resize.

An entry's key is a hash of the bytes of the image and mask files (not their paths or times:
DVC's temporary experiment copies and a re-checkout give the same files new paths and mtimes,
and must reuse the same entries), the shaping, and the versions of this format, Pillow and
OpenCV. The files are hashed once per `DecodedCache` object (one run), which costs one read of
the sources. An entry is `<root>/<shaping>/<key>.seg`: a header (magic, height, width, CRC-32 of
the pixels, the key) and then the image and mask bytes; an entry whose header holds another key
(one copied or restored over it) is rebuilt with a warning, never returned. It is written through a temporary file and a
rename, so several processes building the same entry at once each write their own temporary
file and the last rename wins with identical content; a reader never sees half a file. A file
whose header, length or checksum is wrong is rebuilt, never returned. The checksum is checked
the first time this object reads an entry, not on every epoch.

A cache folder that cannot be read or written (full, read-only, a file where a folder should be,
a folder where an entry should be) is warned about once per kind of error, naming the path, and
training goes on without it: the entry is decoded in memory each time it is needed. A read-only
cache whose entries are all present is still read.
"""

from __future__ import annotations

import hashlib
import logging
import os
import errno
import struct
import zlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import PIL
from tqdm import tqdm

from segpipe.data.letterbox import Letterbox, resize_image, resize_mask
from segpipe.errors import SegpipeError
from segpipe.imageio import atomic_write, read_class_mask, read_image_for
from segpipe.layout import Sample
from segpipe.project import project_root

log = logging.getLogger(__name__)

CACHE_ENV = "SEGPIPE_CACHE_DIR"
DEFAULT_FOLDER = Path(".cache") / "segpipe"
# Bump when what an entry holds changes (a new resize rule, a new layout); old entries are then
# never read again and can be deleted.
FORMAT_VERSION = 2  # 2: the key in the header
_MAGIC = b"SEGPIPE-DECODED\x00"
_HEADER = struct.Struct("<16sIII16s")  # magic, height, width, CRC-32 of image + mask bytes, key
# Write errors that say the whole folder is unusable (so later writes are not even tried), as
# opposed to one bad entry (a folder in its place).
_FOLDER_ERRORS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT, errno.ENOTDIR, errno.EEXIST, errno.ENOENT}


@dataclass(frozen=True)
class Letterboxed:
    """Shaping: letterboxed into a size x size canvas (image padded with the mean colour, mask with 255)."""

    size: int

    @property
    def folder(self) -> str:
        return f"letterbox-{self.size}"

    def build(self, sample: Sample) -> tuple[np.ndarray, np.ndarray]:
        image, full_hw = read_image_for(sample.image, fit=(self.size, self.size))
        box = Letterbox.fit(full_hw, (self.size, self.size))
        return box.apply_reduced(image), box.apply_mask(_read_mask(sample, full_hw))


@dataclass(frozen=True)
class Scaled:
    """Shaping: the whole image resized by `scale` (1.0 = native), each side rounded, at least 1 pixel."""

    scale: float

    def __post_init__(self) -> None:
        if not self.scale > 0:
            raise SegpipeError(f"a cache scale must be above 0 (1.0 = native size), got {self.scale}")

    @property
    def folder(self) -> str:
        return f"scale-{self.scale:g}"

    def build(self, sample: Sample) -> tuple[np.ndarray, np.ndarray]:
        image, full_hw = read_image_for(sample.image, scale=self.scale)
        mask = _read_mask(sample, full_hw)
        size_hw = tuple(max(1, round(side * self.scale)) for side in full_hw)
        return resize_image(image, size_hw), resize_mask(mask, size_hw)


Shaping = Letterboxed | Scaled


def _read_mask(sample: Sample, full_hw: tuple[int, int]) -> np.ndarray:
    mask = read_class_mask(sample.mask)
    if mask.shape != full_hw:
        raise SegpipeError(
            f"{sample.mask}: mask of size {mask.shape[0]}x{mask.shape[1]} does not match its image "
            f"{sample.image} of size {full_hw[0]}x{full_hw[1]}; re-run the convert stage"
        )
    return mask


class DecodedCache:
    """Decoded, shaped uint8 (image, mask) pairs on local disk under `root` (see the module docstring)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._digests: dict[tuple[Path, Path], str] = {}  # source content, hashed once per object
        self._verified: set[Path] = set()  # entries whose checksum this object has checked
        self._warned: set[int | None] = set()  # errnos already warned about (one warning per kind)
        self._unwritable = False  # the folder refused a write: stop trying
        self._off = self.root.exists() and not self.root.is_dir()
        if self._off:
            log.warning("%s: the decoded-cache folder is a file; going on without the cache (images are decoded "
                        "again every epoch). Point %s at a folder, or move the file away", self.root, CACHE_ENV)

    @classmethod
    def default(cls) -> DecodedCache:
        """The cache at $SEGPIPE_CACHE_DIR, else `.cache/segpipe` at the project root (also from
        `dvc exp run --temp` and queued runs, which run in copies of the repo under .dvc/tmp/exps)."""
        configured = os.environ.get(CACHE_ENV)
        return cls(Path(configured) if configured else project_root() / DEFAULT_FOLDER)

    def letterboxed(self, sample: Sample, size: int) -> tuple[np.ndarray, np.ndarray]:
        """The sample letterboxed into size x size: image (size, size, 3), mask (size, size), uint8."""
        return self.get(sample, Letterboxed(size))

    def scaled(self, sample: Sample, scale: float) -> tuple[np.ndarray, np.ndarray]:
        """The whole sample resized by `scale`: image (h, w, 3), mask (h, w), uint8, with
        h = round(H * scale) and w = round(W * scale) of its full size (H, W), each at least 1."""
        return self.get(sample, Scaled(scale))

    def get(self, sample: Sample, shaping: Shaping) -> tuple[np.ndarray, np.ndarray]:
        """The sample's entry for `shaping`, built (and stored) first if missing or corrupt."""
        if self._off:
            return shaping.build(sample)
        path = self.entry_path(sample, shaping)
        entry = self._read(path, shaping)
        if entry is None:
            entry = shaping.build(sample)
            self._store(path, entry)
        return entry

    def warm(self, samples: Sequence[Sample], shaping: Shaping, *, workers: int = 0, progress: bool = False) -> int:
        """Check every sample's entry and build the missing or corrupt ones; returns how many were
        built and stored (a cache folder that refuses writes stores none, with one warning).

        Args:
            samples: the samples a run will read.
            shaping: `Letterboxed(size)` or `Scaled(scale)`.
            workers: threads (decoding and hashing release the GIL); 0 = one per available core.
            progress: show a progress bar.
        """
        threads = max(1, min(workers or available_cores(), len(samples)))
        with ThreadPoolExecutor(threads) as pool, tqdm(
            total=len(samples), desc=f"decode cache ({shaping.folder})", unit="img", disable=not progress, leave=False
        ) as bar:
            built = 0
            for was_built in pool.map(lambda sample: self._ensure(sample, shaping), samples):
                built += was_built
                bar.update()
        return built

    def entry_path(self, sample: Sample, shaping: Shaping) -> Path:
        """Where the sample's entry for `shaping` lives (whether or not it exists yet)."""
        sources = (sample.image, sample.mask)
        if sources not in self._digests:
            self._digests[sources] = _content_digest(sources)
        identity = f"{FORMAT_VERSION}|{PIL.__version__}|{cv2.__version__}|{shaping!r}|{self._digests[sources]}"
        return self.root / shaping.folder / f"{hashlib.sha256(identity.encode()).hexdigest()[:32]}.seg"

    def _ensure(self, sample: Sample, shaping: Shaping) -> bool:
        if self._off:
            return False
        path = self.entry_path(sample, shaping)
        if self._read(path, shaping) is not None or self._unwritable:
            return False
        return self._store(path, shaping.build(sample))

    def _store(self, path: Path, entry: tuple[np.ndarray, np.ndarray]) -> bool:
        """Write the entry; False (after a warning) when the cache folder refuses it."""
        if self._unwritable:
            return False
        try:
            _write_entry(path, *entry)
        except OSError as exc:
            self._unwritable = exc.errno in _FOLDER_ERRORS
            self._warn(exc, f"{path}: cannot write this decoded-cache entry ({exc.strerror or exc}); going on "
                       f"without {'the cache' if self._unwritable else 'it'}, so its images are decoded again every "
                       f"epoch. Free space or make {self.root} a writable folder, point {CACHE_ENV} at "
                       "another folder, or set train.cache: false")
            return False
        self._verified.add(path)
        return True

    def _warn(self, exc: OSError, message: str) -> None:
        if exc.errno not in self._warned:
            self._warned.add(exc.errno)
            log.warning("%s", message)

    def _read(self, path: Path, shaping: Shaping) -> tuple[np.ndarray, np.ndarray] | None:
        try:
            entry = _read_entry(path, verify=path not in self._verified)
        except OSError as exc:  # a folder in its place, a file in place of the cache folder, no permission
            self._warn(exc, f"{path}: cannot read this decoded-cache entry ({exc.strerror or exc}); decoding its "
                       f"image instead. Remove what is there, or point {CACHE_ENV} at a cache folder")
            return None
        if entry is None:
            if path.exists():
                log.warning("%s: corrupt decoded-cache entry, rebuilding it", path)
            return None
        if entry[2] != path.stem:
            log.warning("%s: this decoded-cache entry holds the key %s, another sample's or shaping's (copied or "
                        "restored over it?); rebuilding it", path, entry[2])
            return None
        entry = entry[:2]
        if isinstance(shaping, Letterboxed) and entry[1].shape != (shaping.size, shaping.size):
            log.warning("%s: cache entry of the wrong size %s, rebuilding it", path, entry[1].shape)
            return None
        self._verified.add(path)
        return entry


def available_cores() -> int:
    """The CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def _content_digest(paths: Sequence[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        try:
            with open(path, "rb") as handle:
                digest.update(hashlib.file_digest(handle, "sha256").digest())
        except FileNotFoundError:
            raise SegpipeError(f"{path}: file not found; re-run the stage that writes it") from None
    return digest.hexdigest()


def _write_entry(path: Path, image: np.ndarray, mask: np.ndarray) -> None:
    image, mask = np.ascontiguousarray(image), np.ascontiguousarray(mask)
    height, width = mask.shape
    checksum = zlib.crc32(mask.data, zlib.crc32(image.data))
    header = _HEADER.pack(_MAGIC, height, width, checksum, bytes.fromhex(path.stem))

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            handle.write(header)
            handle.write(image.data)
            handle.write(mask.data)

    atomic_write(path, write)


def _read_entry(path: Path, *, verify: bool) -> tuple[np.ndarray, np.ndarray, str] | None:
    """(image (h, w, 3), mask (h, w), the key in its header) of an entry file, or None when it is
    missing or damaged; OSError when it cannot be read (a folder, no permission)."""
    try:
        with open(path, "rb") as handle:
            data = np.empty(os.fstat(handle.fileno()).st_size, np.uint8)  # not zero-filled, unlike bytearray
            read = handle.readinto(memoryview(data))
    except FileNotFoundError:
        return None
    if read != len(data) or len(data) < _HEADER.size:
        return None
    magic, height, width, checksum, key = _HEADER.unpack_from(data)
    pixels = height * width
    if magic != _MAGIC or not pixels or len(data) != _HEADER.size + 4 * pixels:
        return None
    flat = data[_HEADER.size :]
    if verify and zlib.crc32(flat) != checksum:
        return None
    return flat[: 3 * pixels].reshape(height, width, 3), flat[3 * pixels :].reshape(height, width), key.hex()
