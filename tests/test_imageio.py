"""imageio: outputs kept apart from inputs, folders replaced only when they are the command's own,
temporaries of killed runs cleared, broken links named, SIGTERM unwinding; and reading large photos
for a smaller target (reduced-scale JPEG decoding, draft mode)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segpipe import errors
from segpipe.data.letterbox import Letterbox, resize_image
from segpipe.errors import SegpipeError, Terminated, sigterm_held, sigterm_unwinds
from segpipe.imageio import (
    atomic_dir,
    atomic_write_text,
    broken_links,
    list_images,
    check_apart,
    read_image,
    read_image_for,
    remove_stale_temps,
)
from tests.helpers import dead_pid, make_photo


@pytest.mark.parametrize(
    ("out", "relation"),
    [("data/raw", "is"), ("data", "contains"), (".", "contains"), ("data/raw/processed", "lies inside")],
)
def test_an_output_that_is_holds_or_lies_inside_an_input_is_refused(tmp_path, monkeypatch, out, relation):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "raw").mkdir(parents=True)
    with pytest.raises(SegpipeError, match=rf"the output {out} \(OUT_DIR\) {relation} the input data/raw \(INPUT_DIR\)"):
        check_apart({"OUT_DIR": Path(out)}, {"INPUT_DIR": Path("data/raw")})


def test_outputs_beside_the_inputs_pass(tmp_path):
    (tmp_path / "raw").mkdir()
    check_apart({"OUT_DIR": tmp_path / "processed", "--metrics": tmp_path / "data.json"}, {"INPUT_DIR": tmp_path / "raw"})


def test_symlinks_are_resolved_before_comparing(tmp_path):
    (tmp_path / "real" / "raw").mkdir(parents=True)
    (tmp_path / "alias").symlink_to(tmp_path / "real")
    with pytest.raises(SegpipeError, match="contains the input"):
        check_apart({"OUT_DIR": tmp_path / "alias"}, [("INPUT_DIR", tmp_path / "real" / "raw")])


def test_atomic_dir_replaces_its_own_earlier_output(tmp_path):
    out = tmp_path / "out"
    for text in ("first", "second"):
        with atomic_dir(out, owned=("list.txt",)) as tmp:
            (tmp / "list.txt").write_text(text)
    assert (out / "list.txt").read_text() == "second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_atomic_dir_refuses_a_folder_holding_files_it_did_not_write(tmp_path):
    out = tmp_path / "thesis"
    out.mkdir()
    (out / "chapter1.tex").write_text("months of work")
    with pytest.raises(SegpipeError, match=r"thesis: holds chapter1\.tex, which this command did not write"):
        with atomic_dir(out, owned=("images", "masks")):
            pass
    assert (out / "chapter1.tex").read_text() == "months of work"


def test_atomic_dir_refuses_a_file_and_the_current_folder(tmp_path, monkeypatch):
    notes = tmp_path / "notes.txt"
    notes.write_text("keep me")
    with pytest.raises(SegpipeError, match="notes.txt: is a file"):
        with atomic_dir(notes):
            pass
    assert notes.read_text() == "keep me"
    monkeypatch.chdir(tmp_path / ".")
    for target in (Path("."), tmp_path.parent):
        with pytest.raises(SegpipeError, match="is \\(or holds\\) the current folder"):
            with atomic_dir(target):
                pass


def test_temporaries_of_dead_processes_are_removed_and_live_ones_kept(tmp_path):
    dead, alive = dead_pid(), os.getpid()
    (tmp_path / f".out.tmp-{dead}-x1y2").mkdir()
    (tmp_path / f".out.tmp-{dead}-x1y2" / "a.png").write_bytes(b"half")
    (tmp_path / f".last.pt.tmp-{dead}").write_bytes(b"half a checkpoint")
    (tmp_path / f".best.pt.tmp-{alive}").write_bytes(b"being written")
    (tmp_path / "notes.tmp-1").write_text("not ours: no leading dot")
    removed = remove_stale_temps(tmp_path)
    assert sorted(p.name for p in removed) == sorted([f".last.pt.tmp-{dead}", f".out.tmp-{dead}-x1y2"])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f".best.pt.tmp-{alive}", "notes.tmp-1"])


def test_stale_temporaries_can_be_limited_to_one_output_name(tmp_path):
    dead = dead_pid()
    (tmp_path / f".processed.tmp-{dead}-a").mkdir()
    (tmp_path / f".splits.tmp-{dead}-b").mkdir()
    remove_stale_temps(tmp_path, "processed")
    assert [p.name for p in tmp_path.iterdir()] == [f".splits.tmp-{dead}-b"]


def test_previous_output_moved_aside_by_a_killed_run_is_put_back(tmp_path):
    # Killed between moving the old output aside and publishing the new one: the old one returns.
    old = tmp_path / f".out.old-{dead_pid()}"
    old.mkdir()
    (old / "manifest.csv").write_text("previous")
    remove_stale_temps(tmp_path)
    assert (tmp_path / "out" / "manifest.csv").read_text() == "previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_atomic_dir_clears_stale_temporaries_of_its_target(tmp_path):
    stale = tmp_path / f".out.tmp-{dead_pid()}-zz"
    stale.mkdir()
    with atomic_dir(tmp_path / "out") as tmp:
        (tmp / "a").write_text("x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_atomic_write_leaves_a_name_that_stale_cleanup_recognises(tmp_path):
    atomic_write_text(tmp_path / "a.json", "{}")
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_broken_and_looping_symlinks_are_named(tmp_path):
    (tmp_path / "gone.json").symlink_to(tmp_path / "nowhere.json")
    (tmp_path / "loop.json").symlink_to(tmp_path / "loop.json")
    (tmp_path / "fine.json").write_text("{}")
    problems = broken_links(sorted(tmp_path.iterdir()))
    assert len(problems) == 2
    assert problems[0].startswith(f"{tmp_path / 'gone.json'}: a symlink to {tmp_path / 'nowhere.json'}")
    assert problems[1].startswith(f"{tmp_path / 'loop.json'}: a symlink")


def test_sigterm_unwinds_the_block_and_exits_143():
    before = signal.getsignal(signal.SIGTERM)
    cleaned = []
    with pytest.raises(SystemExit) as info:
        with sigterm_unwinds():
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(10)  # the handler raises at once; the sleep is never finished
            except Terminated:
                cleaned.append(True)
                raise
    assert info.value.code == 128 + signal.SIGTERM and cleaned == [True]
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_sigterm_during_a_held_block_is_raised_when_the_block_ends():
    finished = []
    with pytest.raises(SystemExit):
        with sigterm_unwinds():
            with sigterm_held():
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.2)  # the handler notes the signal and the sleep carries on
                finished.append(True)
            finished.append(False)  # never reached: raised on leaving the held block
    assert finished == [True]


def test_a_swallowed_sigterm_is_raised_again(monkeypatch):
    # A Terminated raised inside an at-fork hook or a __del__ is printed and dropped by Python.
    monkeypatch.setattr(errors, "INSIST_AFTER", 0.2)
    with pytest.raises(SystemExit):
        with sigterm_unwinds():
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(10)
            except Terminated:
                pass
            time.sleep(10)  # cut short by the repeated signal


@pytest.fixture(scope="module")
def photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_photo(tmp_path_factory.mktemp("photo"), "photo", (1200, 1800)).image


def test_a_large_jpeg_is_decoded_at_reduced_scale_never_below_the_target(photo: Path):
    # letterboxed into 256 x 256 it becomes 171 x 256: 1/4 scale (300 x 450) is the smallest that covers it
    pixels, full_hw = read_image_for(photo, fit=(256, 256))
    assert full_hw == (1200, 1800) and pixels.shape == (300, 450, 3) and pixels.dtype == np.uint8
    assert read_image_for(photo, scale=0.5)[0].shape == (600, 900, 3)
    assert read_image_for(photo, scale=0.1)[0].shape == (150, 225, 3)  # 1/8 is the most draft mode does
    assert read_image_for(photo, fit=(1, 1))[0].shape == (150, 225, 3)


def test_a_jpeg_near_the_target_and_other_formats_are_decoded_whole(photo: Path, tmp_path: Path):
    full = read_image(photo)
    for target in ({"scale": 0.6}, {"fit": (1000, 1000)}, {"scale": 1.0}):
        pixels, full_hw = read_image_for(photo, **target)
        assert full_hw == (1200, 1800)
        np.testing.assert_array_equal(pixels, full)
    png = tmp_path / "photo.png"
    Image.fromarray(full).save(png)
    pixels, full_hw = read_image_for(png, fit=(64, 64))
    np.testing.assert_array_equal(pixels, full)


def test_a_reduced_decode_letterboxes_to_within_a_grey_level_of_the_full_one(photo: Path):
    box = Letterbox.fit((1200, 1800), (256, 256))
    reduced = box.apply_reduced(read_image_for(photo, fit=(256, 256))[0]).astype(np.float64)
    full = box.apply_image(read_image(photo)).astype(np.float64)
    assert np.abs(reduced - full).mean() < 1.0
    assert np.percentile(np.abs(reduced - full), 99.9) <= 8


def test_exif_orientation_is_applied_and_the_full_size_is_the_turned_one(tmp_path: Path):
    stored = make_photo(tmp_path, "wide", (400, 800)).image
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned by 90 degrees: 800 high, 400 wide
    turned = tmp_path / "turned.jpg"
    Image.open(stored).save(turned, exif=exif, quality=95)
    pixels, full_hw = read_image_for(turned, fit=(100, 100))
    assert full_hw == (800, 400)
    # letterboxed into 100 x 100 it is 100 x 50: 1/8 scale of the turned size covers that exactly
    assert pixels.shape == (100, 50, 3)
    exact = resize_image(read_image(turned), (100, 50)).astype(np.float64)
    assert np.abs(pixels - exact).mean() < 1.5


def test_a_broken_or_missing_file_is_an_error_naming_it(photo: Path, tmp_path: Path):
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(photo.read_bytes()[:5000])
    with pytest.raises(SegpipeError, match=r"truncated\.jpg: cannot read image"):
        read_image_for(truncated, fit=(64, 64))
    with pytest.raises(SegpipeError, match=r"missing\.jpg: image file not found"):
        read_image_for(tmp_path / "missing.jpg", scale=0.5)
    with pytest.raises(SegpipeError, match="exactly one of fit or scale"):
        read_image_for(photo)


# Wide-range gray images, values chosen so each expected gray level is computed by hand (no ties).
UINT16 = [0, 1, 128, 129, 257, 385, 386, 32767, 32768, 65278, 65535]
UINT16_GRAY = [0, 0, 0, 1, 1, 1, 2, 127, 128, 254, 255]  # round(v / 257)
INT32 = [-(2**31), -1, 0, 2**30, 2**31 - 1]
INT32_GRAY = [0, 127, 128, 191, 255]  # round((v + 2**31) * 255 / (2**32 - 1)): 0, 127.49.., 127.50.., 191.25.., 255
FLOAT = [-2.0, 0.0, 1.0, 6.0]
FLOAT_GRAY = [0, 64, 96, 255]  # the image's own range -2..6: (v + 2) * 255 / 8 = 0, 63.75, 95.625, 255


def wide_gray(path: Path, values: list, dtype, fmt: str) -> Path:
    Image.fromarray(np.array([values], dtype)).save(path, format=fmt)
    return path


WIDE_CASES = {
    "uint16 png": ("gray16.png", UINT16, np.uint16, "PNG", UINT16_GRAY),
    "uint16 tiff": ("gray16.tif", UINT16, np.uint16, "TIFF", UINT16_GRAY),
    "int32 tiff": ("int32.tif", INT32, np.int32, "TIFF", INT32_GRAY),
    "float tiff": ("float.tif", FLOAT, np.float32, "TIFF", FLOAT_GRAY),
}


@pytest.mark.parametrize("case", WIDE_CASES.values(), ids=WIDE_CASES.keys())
def test_wide_gray_images_are_rescaled_to_8_bits_never_clipped(tmp_path: Path, case):
    name, values, dtype, fmt, expected = case
    path = wide_gray(tmp_path / name, values, dtype, fmt)
    gray = np.array([expected], np.uint8)
    for pixels in (read_image(path), read_image(path.read_bytes(), name), read_image_for(path, fit=(64, 64))[0]):
        assert pixels.dtype == np.uint8 and pixels.shape == (1, len(values), 3)
        np.testing.assert_array_equal(pixels, np.repeat(gray[..., None], 3, axis=2))


def test_a_signed_16_bit_tiff_is_scaled_by_the_int16_range_not_int32s(tmp_path: Path):
    # Pillow opens int16 TIFFs as 32-bit mode "I"; the file's tags say it is int16. OpenCV writes one.
    import cv2

    path = tmp_path / "int16.tif"
    assert cv2.imwrite(str(path), np.array([[-32768, -129, 0, 257, 32767]], np.int16))
    # round((v + 32768) / 257): 0, 126.99.., 127.50.., 128.50.., 255
    np.testing.assert_array_equal(read_image(path)[..., 0], [[0, 127, 128, 129, 255]])


def test_an_int32_image_that_its_range_would_flatten_is_refused_not_returned_flat(tmp_path: Path):
    path = wide_gray(tmp_path / "narrow.tif", [0, 4095], np.int32, "TIFF")  # 12-bit data in an int32 file
    with pytest.raises(SegpipeError, match=r"narrow\.tif: its values 0\.\.4095 use so little of the int32 range .*one flat gray"):
        read_image(path)
    flat = wide_gray(tmp_path / "constant.tif", [7, 7], np.int32, "TIFF")  # constant: nothing is lost
    np.testing.assert_array_equal(read_image(flat)[..., 0], [[128, 128]])


def test_a_float_image_with_nan_pixels_is_refused_by_name(tmp_path: Path):
    path = wide_gray(tmp_path / "nodata.tif", [0.0, float("nan"), 1.0], np.float32, "TIFF")
    with pytest.raises(SegpipeError, match=r"nodata\.tif: a float image with NaN or infinite pixels"):
        read_image(path)


def test_a_constant_float_image_is_black_not_an_error(tmp_path: Path):
    path = wide_gray(tmp_path / "flat.tif", [3.5, 3.5], np.float32, "TIFF")
    np.testing.assert_array_equal(read_image(path), np.zeros((1, 2, 3), np.uint8))


def test_48_bit_rgb_keeps_its_colours(tmp_path: Path):
    # Pillow writes no 48-bit PNG; this is one by hand: IHDR bit depth 16, colour type 2 (RGB).
    import struct
    import zlib

    rgb16 = np.array([[[65535, 0, 32768], [256, 512, 1024]]], ">u2")  # big-endian, as PNG stores it
    raw = b"".join(b"\x00" + row.tobytes() for row in rgb16)  # filter byte 0 per row

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", 2, 1, 16, 2, 0, 0, 0)
    path = tmp_path / "rgb48.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    # Pillow keeps the high byte of each 16-bit channel
    np.testing.assert_array_equal(read_image(path), np.array([[[255, 0, 128], [1, 2, 4]]], np.uint8))


def tiff_pages(path: Path, colours: list[tuple[int, int, int]], size=(6, 4)) -> Path:
    """A multi-page TIFF, one flat colour per page."""
    pages = [Image.new("RGB", size, colour) for colour in colours]
    pages[0].save(path, save_all=True, append_images=pages[1:])
    return path


def test_a_multi_page_tiff_gives_its_first_page_with_a_warning_naming_file_and_page_count(tmp_path, caplog):
    path = tiff_pages(tmp_path / "stack.tif", [(10, 20, 30), (200, 0, 0), (0, 200, 0)])
    with caplog.at_level("WARNING", logger="segpipe"):
        image = read_image(path)
    assert image.shape == (4, 6, 3) and (image == [10, 20, 30]).all()
    assert f"{path}: has 3 pages (frames); only the first is used" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="segpipe"):
        pixels, full = read_image_for(path, fit=(2, 3))
    assert full == (4, 6) and (pixels == [10, 20, 30]).all()
    assert f"{path}: has 3 pages" in caplog.text


def test_a_single_page_tiff_reads_without_a_warning(tmp_path, caplog):
    path = tiff_pages(tmp_path / "one.tif", [(1, 2, 3)])
    with caplog.at_level("WARNING", logger="segpipe"):
        read_image(path)
    assert "pages" not in caplog.text


def test_webp_is_an_image_suffix_and_reads_losslessly(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.webp", lossless=True)
    Image.fromarray(pixels).save(tmp_path / "b.png")
    assert [p.name for p in list_images(tmp_path)] == ["a.webp", "b.png"]
    assert np.array_equal(read_image(tmp_path / "a.webp"), pixels)
