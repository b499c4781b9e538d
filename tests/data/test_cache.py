"""The decoded cache: entries are the shaped samples, decoded once, reused by content, rebuilt when
damaged or when they belong to another key; an unusable cache folder is warned about, not fatal."""

from __future__ import annotations

import builtins
import errno
import logging
import multiprocessing
import shutil
from pathlib import Path

import numpy as np
import pytest

from segpipe.data import cache as cache_module
from segpipe.data.cache import CACHE_ENV, DecodedCache, Letterboxed, Scaled
from segpipe.data.letterbox import MEAN_PAD_VALUE, Letterbox, resize_image
from segpipe.errors import SegpipeError
from segpipe.imageio import read_class_mask, read_image
from segpipe.layout import Sample, samples_in
from tests.helpers import CountingCalls, make_photo, make_processed


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> CountingCalls:
    """Counts every image the cache decodes."""
    counter = CountingCalls(cache_module.read_image_for)
    monkeypatch.setattr(cache_module, "read_image_for", counter)
    return counter


def entries(root: Path) -> list[Path]:
    return sorted(root.rglob("*.seg"))


def test_letterboxed_entries_are_the_letterboxed_sample_with_255_mask_padding(tmp_path: Path):
    processed = make_processed(tmp_path / "processed", count=1, size=(24, 40))
    sample = samples_in(processed, ["img000"])[0]
    image, mask = DecodedCache(tmp_path / "cache").letterboxed(sample, 32)
    box = Letterbox.fit((24, 40), (32, 32))
    np.testing.assert_array_equal(image, box.apply_image(read_image(sample.image)))
    np.testing.assert_array_equal(mask, box.apply_mask(read_class_mask(sample.mask)))
    assert image.dtype == mask.dtype == np.uint8 and image.shape == (32, 32, 3)
    assert (mask[: box.top] == 255).all() and (image[: box.top] == MEAN_PAD_VALUE).all()
    image[:] = 0  # the arrays are the caller's: writing them does not touch the cache
    assert DecodedCache(tmp_path / "cache").letterboxed(sample, 32)[0].any()


def test_scaled_entries_are_the_whole_photo_resized_by_the_factor(tmp_path: Path):
    sample = make_photo(tmp_path / "photos", "p", (600, 900))
    cache = DecodedCache(tmp_path / "cache")
    full, full_mask = read_image(sample.image), read_class_mask(sample.mask)
    native, native_mask = cache.scaled(sample, 1.0)
    np.testing.assert_array_equal(native, full)
    np.testing.assert_array_equal(native_mask, full_mask)
    for scale, size in ((0.5, (300, 450)), (1 / 3, (200, 300)), (0.1, (60, 90))):
        image, mask = cache.scaled(sample, scale)
        assert image.shape == (*size, 3) and mask.shape == size
        assert set(np.unique(mask)) == {0, 1}
        # decoded at reduced scale, yet within a grey level of shrinking the full decode
        exact = resize_image(full, size).astype(np.float64)
        assert np.abs(image - exact).mean() < 1.0, scale
        assert abs(mask.mean() - full_mask.mean()) < 0.01
    assert [p.parent.name for p in entries(tmp_path / "cache")] == ["scale-0.1", "scale-0.333333", "scale-0.5", "scale-1"]
    with pytest.raises(SegpipeError, match="above 0"):
        Scaled(0.0)


def test_a_second_run_reads_every_entry_without_decoding_again(tmp_path: Path, decodes: CountingCalls):
    photos = [make_photo(tmp_path / "photos", f"p{i}", (300, 400), seed=i) for i in range(3)]
    first = DecodedCache(tmp_path / "cache")
    assert first.warm(photos, Letterboxed(64), workers=2) == 3
    assert decodes.calls == 3
    built = [first.letterboxed(p, 64) for p in photos]
    assert decodes.calls == 3
    second = DecodedCache(tmp_path / "cache")  # a new run
    assert second.warm(photos, Letterboxed(64)) == 0
    reread = [second.letterboxed(p, 64) for p in photos]
    assert decodes.calls == 3
    for (image, mask), (again, mask_again) in zip(built, reread):
        np.testing.assert_array_equal(image, again)
        np.testing.assert_array_equal(mask, mask_again)
    assert second.warm(photos, Letterboxed(32)) == 3  # another shaping is another entry


def test_entries_follow_file_contents_so_a_copy_reuses_them_and_an_edit_rebuilds(tmp_path: Path, decodes):
    photos = [make_photo(tmp_path / "photos", f"p{i}", (300, 400), seed=i) for i in range(2)]
    DecodedCache(tmp_path / "cache").warm(photos, Letterboxed(64))
    # a copy in another folder (as `dvc exp run --temp` makes), with new paths and times
    shutil.copytree(tmp_path / "photos", tmp_path / "copy")
    copies = [Sample(p.id, tmp_path / "copy" / "images" / p.image.name, tmp_path / "copy" / "masks" / p.mask.name) for p in photos]
    assert DecodedCache(tmp_path / "cache").warm(copies, Letterboxed(64)) == 0
    assert decodes.calls == 2
    make_photo(tmp_path / "copy", "p1", (300, 400), seed=7)  # the image and mask change
    cache = DecodedCache(tmp_path / "cache")
    assert cache.warm(copies, Letterboxed(64)) == 1
    image, mask = cache.letterboxed(copies[1], 64)
    np.testing.assert_array_equal(mask, Letterbox.fit((300, 400), (64, 64)).apply_mask(read_class_mask(copies[1].mask)))


def damage_truncated(path: Path, cache: DecodedCache, sample: Sample) -> None:
    path.write_bytes(path.read_bytes()[:-100])


def damage_header(path: Path, cache: DecodedCache, sample: Sample) -> None:
    data = bytearray(path.read_bytes())
    data[0] ^= 0xFF
    path.write_bytes(bytes(data))


def damage_pixels(path: Path, cache: DecodedCache, sample: Sample) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit of one pixel: only the checksum can tell
    path.write_bytes(bytes(data))


def damage_shape(path: Path, cache: DecodedCache, sample: Sample) -> None:
    cache.letterboxed(sample, 16)  # a whole, valid entry of the wrong size
    shutil.copy(cache.entry_path(sample, Letterboxed(16)), path)


def damage_emptied(path: Path, cache: DecodedCache, sample: Sample) -> None:
    path.write_bytes(b"")


DAMAGES = [damage_truncated, damage_header, damage_pixels, damage_shape, damage_emptied]


@pytest.mark.parametrize("damage", DAMAGES, ids=[d.__name__.removeprefix("damage_") for d in DAMAGES])
def test_a_damaged_entry_is_rebuilt_never_returned(tmp_path: Path, decodes: CountingCalls, damage):
    sample = make_photo(tmp_path / "photos", "p", (120, 160))
    good_image, good_mask = DecodedCache(tmp_path / "cache").letterboxed(sample, 32)
    cache = DecodedCache(tmp_path / "cache")
    path = cache.entry_path(sample, Letterboxed(32))
    damage(path, cache, sample)
    decodes.calls = 0
    image, mask = DecodedCache(tmp_path / "cache").letterboxed(sample, 32)
    assert decodes.calls == 1
    np.testing.assert_array_equal(image, good_image)
    np.testing.assert_array_equal(mask, good_mask)
    assert DecodedCache(tmp_path / "cache").warm([sample], Letterboxed(32)) == 0  # the file is whole again


def test_an_interrupted_write_leaves_no_entry_and_a_later_run_builds_it(tmp_path: Path, monkeypatch):
    sample = make_photo(tmp_path / "photos", "p", (120, 160))
    cache = DecodedCache(tmp_path / "cache")
    path = cache.entry_path(sample, Letterboxed(32))
    real_write = cache_module.atomic_write

    def crash_halfway(target: Path, write) -> None:
        def half(tmp: Path) -> None:
            write(tmp)
            tmp.write_bytes(tmp.read_bytes()[:50])
            raise KeyboardInterrupt

        real_write(target, half)

    monkeypatch.setattr(cache_module, "atomic_write", crash_halfway)
    with pytest.raises(KeyboardInterrupt):
        cache.letterboxed(sample, 32)
    assert not path.exists() and list(path.parent.iterdir()) == []
    # a process killed outright leaves its temporary file behind: it is never read as an entry
    path.with_name(f".{path.name}.tmp-999-1").write_bytes(b"half an entry")
    monkeypatch.setattr(cache_module, "atomic_write", real_write)
    image, mask = DecodedCache(tmp_path / "cache").letterboxed(sample, 32)
    assert image.shape == (32, 32, 3) and path.is_file()


def _build_after(barrier, root: str, sample: Sample) -> bytes:
    barrier.wait()  # every process starts building the same entry at the same moment
    image, mask = DecodedCache(Path(root)).letterboxed(sample, 96)
    return image.tobytes() + mask.tobytes()


def test_several_processes_building_one_entry_at_once_all_get_it_whole(tmp_path: Path):
    sample = make_photo(tmp_path / "photos", "p", (900, 1200))
    context = multiprocessing.get_context("fork")
    barrier = context.Manager().Barrier(4)
    with context.Pool(4) as pool:
        results = pool.starmap(_build_after, [(barrier, str(tmp_path / "cache"), sample)] * 4)
    expected_image, expected_mask = Letterboxed(96).build(sample)
    assert set(results) == {expected_image.tobytes() + expected_mask.tobytes()}
    files = list((tmp_path / "cache" / "letterbox-96").iterdir())
    assert [f.suffix for f in files] == [".seg"]  # one entry, no temporary file left
    cached = DecodedCache(tmp_path / "cache").letterboxed(sample, 96)
    assert cached[0].tobytes() + cached[1].tobytes() == results[0]


def test_the_default_cache_is_at_the_project_root_also_from_a_temporary_experiment(tmp_path: Path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "elsewhere"))
    assert DecodedCache.default().root == tmp_path / "elsewhere"
    monkeypatch.delenv(CACHE_ENV)
    experiment_copy = tmp_path / "project" / ".dvc" / "tmp" / "exps" / "tmpabc123"
    monkeypatch.setenv("DVC_ROOT", str(experiment_copy))
    assert DecodedCache.default().root == (tmp_path / "project" / ".cache" / "segpipe").resolve()


def test_a_mask_of_another_size_than_its_image_is_refused_naming_both(tmp_path: Path):
    sample = make_photo(tmp_path / "photos", "p", (120, 160))
    other = make_photo(tmp_path / "other", "q", (100, 160))
    mixed = Sample("p", sample.image, other.mask)
    with pytest.raises(SegpipeError, match=r"q\.png: mask of size 100x160 does not match its image .*p\.jpg of size 120x160"):
        DecodedCache(tmp_path / "cache").letterboxed(mixed, 32)
    assert entries(tmp_path / "cache") == []


def test_an_entry_copied_over_another_is_rebuilt_with_its_own_pixels(tmp_path: Path, decodes, caplog):
    a, b = (make_photo(tmp_path / "photos", name, (120, 160), seed=seed) for name, seed in (("a", 1), ("b", 2)))
    cache = DecodedCache(tmp_path / "cache")
    a_image, a_mask = cache.letterboxed(a, 32)
    b_image, _ = cache.letterboxed(b, 32)
    assert not np.array_equal(a_image, b_image)
    path_a = cache.entry_path(a, Letterboxed(32))
    shutil.copy(cache.entry_path(b, Letterboxed(32)), path_a)  # a whole, valid entry: header, length, CRC
    decodes.calls = 0
    with caplog.at_level(logging.WARNING):
        image, mask = DecodedCache(tmp_path / "cache").letterboxed(a, 32)
    np.testing.assert_array_equal(image, a_image)
    np.testing.assert_array_equal(mask, a_mask)
    assert decodes.calls == 1
    assert f"{path_a}: this decoded-cache entry holds the key" in caplog.text
    assert DecodedCache(tmp_path / "cache").warm([a, b], Letterboxed(32)) == 0  # rebuilt with its own key


def full_disk(path, mode="r", *args, **kwargs):
    """`open` of a disk that fills up: a write gets half its bytes on disk, then ENOSPC."""
    handle = builtins.open(path, mode, *args, **kwargs)
    if "w" not in mode:
        return handle

    class Full:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            handle.close()

        def write(self, data):
            handle.write(bytes(data)[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device", str(path))

    return Full()


def read_only(path, mode="r", *args, **kwargs):
    if "w" in mode:
        raise OSError(errno.EROFS, "Read-only file system", str(path))
    return builtins.open(path, mode, *args, **kwargs)


@pytest.mark.parametrize(("fake_open", "reason"), [(full_disk, "No space left"), (read_only, "Read-only")], ids=["full", "read-only"])
def test_a_full_or_read_only_cache_warns_once_and_training_reads_on_without_it(tmp_path, monkeypatch, caplog, fake_open, reason):
    photos = [make_photo(tmp_path / "photos", f"p{i}", (120, 160), seed=i) for i in range(3)]
    expected = [Letterboxed(32).build(p) for p in photos]
    monkeypatch.setattr(cache_module, "open", fake_open, raising=False)
    cache = DecodedCache(tmp_path / "cache")
    with caplog.at_level(logging.WARNING):
        assert cache.warm(photos, Letterboxed(32), workers=1) == 0
        for photo, (image, mask) in zip(photos, expected):
            got = cache.letterboxed(photo, 32)
            np.testing.assert_array_equal(got[0], image)
            np.testing.assert_array_equal(got[1], mask)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert f"{cache.entry_path(photos[0], Letterboxed(32))}: cannot write this decoded-cache entry ({reason}" in warnings[0]
    assert "going on without the cache" in warnings[0] and "train.cache: false" in warnings[0]
    assert [p for p in (tmp_path / "cache").rglob("*") if p.is_file()] == []  # no partial entry, no temporary


def test_an_entry_that_is_a_folder_is_named_and_its_sample_decoded_instead(tmp_path: Path, caplog):
    sample = make_photo(tmp_path / "photos", "p", (120, 160))
    cache = DecodedCache(tmp_path / "cache")
    path = cache.entry_path(sample, Letterboxed(32))
    path.mkdir(parents=True)
    with caplog.at_level(logging.WARNING):
        image, mask = cache.letterboxed(sample, 32)
        cache.letterboxed(sample, 32)
    expected_image, expected_mask = Letterboxed(32).build(sample)
    np.testing.assert_array_equal(image, expected_image)
    np.testing.assert_array_equal(mask, expected_mask)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and warnings[0].startswith(f"{path}: cannot read this decoded-cache entry"), warnings
    assert path.is_dir()
    other = make_photo(tmp_path / "photos", "q", (120, 160), seed=3)  # the rest of the cache still works
    cache.letterboxed(other, 32)
    assert cache.entry_path(other, Letterboxed(32)).is_file()


def test_a_cache_dir_that_is_a_file_is_named_and_left_alone(tmp_path: Path, monkeypatch, caplog):
    sample = make_photo(tmp_path / "photos", "p", (120, 160))
    not_a_folder = tmp_path / "cache.txt"
    not_a_folder.write_text("my notes")
    monkeypatch.setenv(CACHE_ENV, str(not_a_folder))
    with caplog.at_level(logging.WARNING):
        cache = DecodedCache.default()
        assert cache.warm([sample], Letterboxed(32)) == 0
        image, mask = cache.letterboxed(sample, 32)
    np.testing.assert_array_equal(image, Letterboxed(32).build(sample)[0])
    assert f"{not_a_folder}: the decoded-cache folder is a file" in caplog.text and CACHE_ENV in caplog.text
    assert not_a_folder.read_text() == "my notes"


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc, where no folder can be made")
def test_a_cache_folder_that_cannot_be_created_is_given_up_after_one_warning(tmp_path: Path, caplog, monkeypatch):
    photos = [make_photo(tmp_path / "photos", f"p{i}", (120, 160), seed=i) for i in range(3)]
    writes = CountingCalls(cache_module._write_entry)
    monkeypatch.setattr(cache_module, "_write_entry", writes)
    cache = DecodedCache(Path("/proc/segpipe-cache-test"))  # a real filesystem refusing mkdir (ENOENT)
    with caplog.at_level(logging.WARNING):
        assert cache.warm(photos, Letterboxed(32), workers=1) == 0
        image, _ = cache.letterboxed(photos[1], 32)
    np.testing.assert_array_equal(image, Letterboxed(32).build(photos[1])[0])
    assert writes.calls == 1  # not one failing write per sample and epoch
    assert caplog.text.count("cannot write this decoded-cache entry") == 1 and "going on without the cache" in caplog.text
