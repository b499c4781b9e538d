"""convert_dataset end to end on tiny hand-made folders: outputs, manifest, metrics and failures."""

from __future__ import annotations

import base64
import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segpipe.prep import parallel
from segpipe.config import DataSection, parse_params
from segpipe.prep.convert import ConvertSummary, convert_dataset
from segpipe.errors import SegpipeError

CLASSES = ("background", "lesion", "hair")
LABELME = DataSection(format="labelme", workers=1)


def rect(x1, y1, x2, y2, label="lesion") -> dict:
    return {"label": label, "points": [[x1, y1], [x2, y2]], "shape_type": "rectangle", "group_id": None, "flags": {}}


def write_labelme(path: Path, shapes: list[dict], size=(8, 6), image: str | None = None, embed: bool = False) -> Path:
    """A labelme file beside its PNG picture (or with the picture embedded)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    picture = path.with_suffix(".png")
    pixels = np.arange(size[0] * size[1] * 3, dtype=np.uint8).reshape(size[1], size[0], 3)
    Image.fromarray(pixels).save(picture)
    data = {"version": "5.4.1", "flags": {}, "shapes": shapes, "imagePath": image or picture.name,
            "imageData": base64.b64encode(picture.read_bytes()).decode() if embed else None,
            "imageWidth": size[0], "imageHeight": size[1]}
    path.write_text(json.dumps(data))
    return path


def run(input_dir: Path, tmp_path: Path, data: DataSection = LABELME, out: str = "out") -> ConvertSummary:
    return convert_dataset(input_dir, tmp_path / out, tmp_path / f"{out}.json", classes=CLASSES, data=data, progress=False)


def read_manifest(out: Path) -> list[dict]:
    with open(out / "manifest.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def tiny_set(root: Path) -> Path:
    """a: 8x6 with a 4x3 lesion and a 2x2 ignore patch; b: 4x4 with nothing drawn (in a subfolder)."""
    write_labelme(root / "a.json", [rect(1, 1, 4, 3), rect(6, 4, 7, 5, "__ignore__")])
    write_labelme(root / "more" / "b.json", [], size=(4, 4))
    return root


def test_manifest_lists_sizes_and_pixels_per_class(tmp_path):
    run(tiny_set(tmp_path / "in"), tmp_path)
    rows = read_manifest(tmp_path / "out")
    assert list(rows[0]) == ["id", "source", "width", "height", "pixels_background", "pixels_lesion",
                             "pixels_hair", "pixels_ignore"]
    assert [list(r.values()) for r in rows] == [
        ["a", "a.json", "8", "6", "32", "12", "0", "4"],
        ["b", "more/b.json", "4", "4", "16", "0", "0", "0"],
    ]


def test_metrics_hold_count_size_range_and_class_fractions(tmp_path):
    summary = run(tiny_set(tmp_path / "in"), tmp_path)
    metrics = json.loads((tmp_path / "out.json").read_text())
    # 64 pixels in all: 48 background, 12 lesion, 4 ignored
    assert metrics == {"images": 2, "min_width": 4, "max_width": 8, "min_height": 4, "max_height": 6,
                       "fraction_background": 0.75, "fraction_lesion": 0.1875, "fraction_hair": 0.0,
                       "fraction_ignore": 0.0625}
    assert summary.images == 2 and summary.metrics == metrics
    assert str(summary) == "2 images (background 75.0%, lesion 18.8%, hair 0.0%, ignore 6.2% of pixels)"


def test_masks_are_palette_pngs_of_class_ids(tmp_path):
    run(tiny_set(tmp_path / "in"), tmp_path)
    with Image.open(tmp_path / "out" / "masks" / "a.png") as mask:
        assert mask.mode == "P"
        ids = np.asarray(mask)
    assert ids[1, 1] == 1 and ids[3, 4] == 1 and ids[0, 0] == 0 and ids[5, 7] == 255


def test_rgb_png_is_copied_byte_for_byte(tmp_path):
    tiny_set(tmp_path / "in")
    run(tmp_path / "in", tmp_path)
    assert (tmp_path / "out" / "images" / "a.png").read_bytes() == (tmp_path / "in" / "a.png").read_bytes()


def test_gray_image_is_written_as_rgb_png(tmp_path):
    (tmp_path / "in").mkdir()
    Image.new("L", (4, 3), 77).save(tmp_path / "in" / "g.bmp")
    (tmp_path / "in" / "g.json").write_text(json.dumps({"shapes": [], "imagePath": "g.bmp", "imageData": None}))
    run(tmp_path / "in", tmp_path, out="o")
    with Image.open(tmp_path / "o" / "images" / "g.png") as image:
        assert image.mode == "RGB" and image.getpixel((0, 0)) == (77, 77, 77)


def test_image_data_and_image_path_give_identical_outputs(tmp_path):
    write_labelme(tmp_path / "p" / "x.json", [rect(1, 1, 4, 3)])
    write_labelme(tmp_path / "d" / "x.json", [rect(1, 1, 4, 3)], image="elsewhere/x.png", embed=True)
    run(tmp_path / "p", tmp_path, out="from_path")
    run(tmp_path / "d", tmp_path, out="from_data")
    for name in ("images/x.png", "masks/x.png"):
        assert (tmp_path / "from_path" / name).read_bytes() == (tmp_path / "from_data" / name).read_bytes()


def test_jpeg_without_rotation_is_copied_and_exif_rotated_jpeg_is_rotated(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated 90 degrees clockwise
    pixels = np.zeros((4, 8, 3), np.uint8)
    pixels[:, :4] = 255
    source = tmp_path / "in"
    source.mkdir()
    Image.fromarray(pixels).save(source / "r.jpg", exif=exif, quality=95)
    Image.fromarray(pixels).save(source / "s.jpg", quality=95)
    for stem, (w, h) in (("r", (4, 8)), ("s", (8, 4))):
        (source / f"{stem}.json").write_text(json.dumps(
            {"shapes": [], "imagePath": f"{stem}.jpg", "imageData": None, "imageWidth": w, "imageHeight": h}))
    run(source, tmp_path, out="o")
    assert (tmp_path / "o" / "images" / "s.jpg").read_bytes() == (source / "s.jpg").read_bytes()
    with Image.open(tmp_path / "o" / "images" / "r.png") as rotated:
        assert rotated.size == (4, 8)
        assert rotated.getpixel((0, 0))[0] > 200 and rotated.getpixel((0, 7))[0] < 50  # white half on top
    assert {r["id"]: (r["width"], r["height"]) for r in read_manifest(tmp_path / "o")} == {"r": ("4", "8"), "s": ("8", "4")}


def test_duplicate_ids_name_both_files(tmp_path):
    write_labelme(tmp_path / "in" / "one" / "a.json", [])
    write_labelme(tmp_path / "in" / "two" / "a.json", [])
    with pytest.raises(SegpipeError, match=r"(?s)duplicate ids.*'a': .*one/a\.json, .*two/a\.json"):
        run(tmp_path / "in", tmp_path)


def test_empty_input_names_the_folder(tmp_path):
    (tmp_path / "in").mkdir()
    with pytest.raises(SegpipeError, match=r"in: no labelme \.json files found"):
        run(tmp_path / "in", tmp_path)


def test_a_bad_file_leaves_out_dir_and_metrics_untouched(tmp_path):
    tiny_set(tmp_path / "in")
    write_labelme(tmp_path / "in" / "bad.json", [rect(1, 1, 2, 2, "tumour")])
    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.csv").write_text("previous run")
    with pytest.raises(SegpipeError, match=r"bad\.json: labels \['tumour'\]"):
        run(tmp_path / "in", tmp_path)
    assert sorted(p.name for p in out.iterdir()) == ["manifest.csv"]
    assert (out / "manifest.csv").read_text() == "previous run"
    assert not (tmp_path / "out.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "out"]  # no temporary folder left


def test_every_bad_file_is_listed_in_one_error(tmp_path):
    source = tmp_path / "in"
    write_labelme(source / "a.json", [rect(1, 1, 2, 2, "tumour")])
    (source / "b.json").write_text("{")
    write_labelme(source / "c.json", [rect(3, 3, 3, 3)])
    write_labelme(source / "d.json", [rect(1, 1, 2, 2)])
    with pytest.raises(SegpipeError) as info:
        run(source, tmp_path, out="o")
    lines = str(info.value).splitlines()
    assert lines[0] == "3 problem(s) in the input (4 labelme files found):"
    assert "a.json: labels ['tumour']" in lines[1] and "b.json: not valid JSON" in lines[2]
    assert "c.json: shape 0 (label 'lesion')" in lines[3] and len(lines) == 4


def test_parallel_run_matches_serial_run_and_reports_bad_files(tmp_path):
    items = parallel.PARALLEL_THRESHOLD + 4
    for i in range(items):
        write_labelme(tmp_path / "in" / f"i{i:02d}.json", [rect(i % 5, 0, 6, 1 + i % 4, "hair")])
    serial, two_workers = DataSection(workers=1), DataSection(workers=2)
    run(tmp_path / "in", tmp_path, serial, out="serial")
    run(tmp_path / "in", tmp_path, two_workers, out="parallel")
    for path in sorted((tmp_path / "serial").rglob("*.*")):
        assert path.read_bytes() == (tmp_path / "parallel" / path.relative_to(tmp_path / "serial")).read_bytes()
    assert (tmp_path / "serial.json").read_text() == (tmp_path / "parallel.json").read_text()
    write_labelme(tmp_path / "in" / "zz.json", [rect(0, 0, 1, 1, "lesion-2")])
    with pytest.raises(SegpipeError, match=r"1 problem.*\n.*zz\.json: labels \['lesion-2'\]"):
        run(tmp_path / "in", tmp_path, two_workers, out="parallel")


# --- the masks format ---------------------------------------------------------------------------


def masks_data(**overrides) -> DataSection:
    section = {"format": "masks", "mask_colors": {"background": 0, "lesion": 255}, "workers": 1, **overrides}
    return parse_params({"base": {"classes": list(CLASSES)}, "data": section}).data


def mask_folder(root: Path, masks: dict[str, np.ndarray], suffix: str = "") -> Path:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for stem, levels in masks.items():
        Image.new("RGB", (levels.shape[1], levels.shape[0]), (5, 6, 7)).save(root / "images" / f"{stem}.jpg")
        Image.fromarray(levels).save(root / "masks" / f"{stem}{suffix}.png")
    return root


def test_mask_folder_converts_with_a_suffix(tmp_path):
    levels = np.array([[0, 255], [255, 255]], np.uint8)
    mask_folder(tmp_path / "in", {"IMD002": levels}, suffix="_lesion")
    run(tmp_path / "in", tmp_path, masks_data(mask_suffix="_lesion"))
    with Image.open(tmp_path / "out" / "masks" / "IMD002.png") as mask:
        assert np.array_equal(np.asarray(mask), [[0, 1], [1, 1]])
    assert read_manifest(tmp_path / "out")[0]["source"] == "images/IMD002.jpg"
    assert (tmp_path / "out" / "images" / "IMD002.jpg").exists()


def test_unknown_mask_values_are_listed_with_counts_and_files(tmp_path):
    mask_folder(tmp_path / "in", {
        "a": np.array([[0, 7], [7, 255]], np.uint8),
        "b": np.array([[7, 128], [0, 0]], np.uint8),
    })
    with pytest.raises(SegpipeError) as info:
        run(tmp_path / "in", tmp_path, masks_data())
    message = str(info.value)
    assert "  7: 3 pixels in masks/a.png, masks/b.png" in message
    assert "  128: 1 pixels in masks/b.png" in message
    assert "unknown_colors: ignore" in message
    assert not (tmp_path / "out").exists()


def test_unknown_colors_ignore_paints_them_255(tmp_path):
    mask_folder(tmp_path / "in", {"a": np.array([[0, 7], [7, 255]], np.uint8)})
    summary = run(tmp_path / "in", tmp_path, masks_data(unknown_colors="ignore"))
    with Image.open(tmp_path / "out" / "masks" / "a.png") as mask:
        assert np.array_equal(np.asarray(mask), [[0, 255], [255, 1]])
    assert summary.metrics["fraction_ignore"] == 0.5


def test_missing_masks_and_images_are_named_together_with_bad_sizes(tmp_path):
    root = mask_folder(tmp_path / "in", {"a": np.zeros((2, 2), np.uint8), "b": np.zeros((2, 2), np.uint8)})
    (root / "masks" / "b.png").unlink()
    Image.new("L", (2, 2)).save(root / "masks" / "orphan.png")
    Image.new("L", (3, 2)).save(root / "masks" / "a.png")
    with pytest.raises(SegpipeError) as info:
        run(root, tmp_path, masks_data())
    message = str(info.value)
    assert "b.jpg: no mask found" in message and "orphan.png: mask without an image" in message
    assert "a.png: the mask is 3x2 but its image a.jpg is 2x2" in message


def test_dangling_and_looping_json_symlinks_are_named_not_dropped(tmp_path):
    source = tiny_set(tmp_path / "in")
    (source / "moved.json").symlink_to(tmp_path / "elsewhere" / "moved.json")
    (source / "loop.json").symlink_to(source / "loop.json")
    with pytest.raises(SegpipeError) as info:
        run(source, tmp_path)
    message = str(info.value)
    assert "2 problem(s) in the input" in message
    assert f"{source / 'moved.json'}: a symlink to {tmp_path / 'elsewhere' / 'moved.json'}, which does not exist" in message
    assert f"{source / 'loop.json'}: a symlink" in message
    assert not (tmp_path / "out").exists()


def test_a_folder_of_broken_json_symlinks_names_them(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.json").symlink_to(tmp_path / "gone.json")
    with pytest.raises(SegpipeError, match=r"(?s)no labelme \.json files found.*a\.json: a symlink to .*gone\.json"):
        run(tmp_path / "in", tmp_path)


def test_broken_image_and_mask_symlinks_are_named(tmp_path):
    root = tmp_path / "in"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    Image.new("RGB", (4, 4)).save(root / "images" / "a.png")
    Image.new("L", (4, 4)).save(root / "masks" / "a.png")
    (root / "images" / "b.png").symlink_to(tmp_path / "gone.png")
    (root / "masks" / "c.png").symlink_to(root / "masks" / "c.png")
    data = DataSection(format="masks", mask_colors={"background": 0, "lesion": 255}, workers=1)
    with pytest.raises(SegpipeError) as info:
        run(root, tmp_path, data)
    assert "images/b.png: a symlink" in str(info.value) and "masks/c.png: a symlink" in str(info.value)


@pytest.mark.parametrize(
    ("mask_names", "suffix", "setting"),
    [
        (["{}_segmentation.png"], "", "data.mask_suffix: _segmentation"),  # ISIC
        (["{}_lesion.bmp"], "", "data.mask_suffix: _lesion"),  # PH2
        (["{}.png"], "_segmentation", 'data.mask_suffix: ""'),  # same names, a suffix set
    ],
)
def test_masks_sharing_a_suffix_get_a_hint_naming_the_setting_first(tmp_path, mask_names, suffix, setting):
    stems = [f"ISIC_{i:07d}" for i in range(25)]  # more than the capped list shows
    for stem in stems:
        for folder, name in (("images", f"{stem}.jpg"), ("masks", mask_names[0].format(stem))):
            (tmp_path / "in" / folder).mkdir(parents=True, exist_ok=True)
            Image.new("RGB" if folder == "images" else "L", (4, 3)).save(tmp_path / "in" / folder / name)
    with pytest.raises(SegpipeError) as info:
        run(tmp_path / "in", tmp_path, DataSection(format="masks", mask_suffix=suffix), out="o")
    lines = str(info.value).splitlines()
    assert lines[0] == "50 problem(s) in the input (0 image/mask pairs matched):"
    assert lines[1].startswith("  hint: all 25 masks without an image") and f"`{setting}`" in lines[1]


def test_no_hint_when_the_unmatched_masks_differ(tmp_path):
    for folder, names in (("images", ["a.jpg", "b.jpg"]), ("masks", ["a_seg.png", "b_lesion.png"])):
        (tmp_path / "in" / folder).mkdir(parents=True)
        for name in names:
            Image.new("RGB" if folder == "images" else "L", (4, 3)).save(tmp_path / "in" / folder / name)
    with pytest.raises(SegpipeError) as info:
        run(tmp_path / "in", tmp_path, DataSection(format="masks"), out="o")
    assert "  hint: " not in str(info.value) and "4 problem(s) in the input (0 image/mask pairs matched)" in str(info.value)


# --- file names that cannot become ids -----------------------------------------------------------


@pytest.mark.parametrize(
    ("stem", "wrong"),
    [
        ("trail ", "starts or ends with whitespace"),
        (" lead", "starts or ends with whitespace"),
        ("new\nline", r"line-break character\(s\) '\\n'"),
        ("tab\tbed", r"line-break character\(s\) '\\t'"),
        ("bell\x07", r"line-break character\(s\) '\\x07'"),
        ("line\u2028separator", r"line-break character\(s\) '\\u2028'"),
        ("no-break space\xa0", "starts or ends with whitespace"),
    ],
)
@pytest.mark.parametrize("data_format", ["labelme", "masks"])
def test_file_names_that_cannot_become_ids_are_named_and_nothing_is_written(tmp_path, stem, wrong, data_format):
    if data_format == "labelme":
        tiny_set(tmp_path / "in")
        bad = write_labelme(tmp_path / "in" / f"{stem}.json", [rect(1, 1, 4, 3)])
        data = LABELME
    else:
        mask_folder(tmp_path / "in", {"good": np.zeros((2, 2), np.uint8), stem: np.zeros((2, 2), np.uint8)})
        bad = tmp_path / "in" / "images" / f"{stem}.jpg"
        data = masks_data()
    with pytest.raises(SegpipeError, match=re.escape(repr(str(bad))) + ": the file name .*" + wrong):
        run(tmp_path / "in", tmp_path, data)
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.json").exists()


def test_whitespace_after_the_extension_is_named_not_skipped(tmp_path):
    mask_folder(tmp_path / "in", {"good": np.zeros((2, 2), np.uint8)})
    (tmp_path / "in" / "images" / "other.jpg ").write_bytes((tmp_path / "in" / "images" / "good.jpg").read_bytes())
    with pytest.raises(SegpipeError, match=re.escape(repr(str(tmp_path / "in" / "images" / "other.jpg "))) + ": the file name starts or ends"):
        run(tmp_path / "in", tmp_path, masks_data())



def test_webp_and_multi_page_tiff_images_are_converted_the_tiff_with_a_warning(tmp_path, caplog):
    mask_folder(tmp_path / "in", {"plain": np.zeros((2, 2), np.uint8)})
    pixels = np.array([[[1, 2, 3], [4, 5, 6]], [[7, 8, 9], [10, 11, 12]]], np.uint8)
    Image.fromarray(pixels).save(tmp_path / "in" / "images" / "web.webp", lossless=True)
    Image.fromarray(np.array([[0, 255], [0, 0]], np.uint8)).save(tmp_path / "in" / "masks" / "web.png")
    pages = [Image.fromarray(pixels), Image.new("RGB", (2, 2), (99, 99, 99))]
    pages[0].save(tmp_path / "in" / "images" / "stack.tif", save_all=True, append_images=pages[1:])
    Image.fromarray(np.full((2, 2), 255, np.uint8)).save(tmp_path / "in" / "masks" / "stack.png")
    with caplog.at_level("WARNING", logger="segpipe"):
        summary = run(tmp_path / "in", tmp_path, masks_data())
    assert summary.images == 3
    assert {row["id"]: row["source"] for row in read_manifest(tmp_path / "out")} == {
        "plain": "images/plain.jpg", "stack": "images/stack.tif", "web": "images/web.webp"}
    for stem in ("web", "stack"):  # written as PNG, pixels exact (the TIFF's first page)
        assert np.array_equal(np.asarray(Image.open(tmp_path / "out" / "images" / f"{stem}.png")), pixels)
    assert "stack.tif: has 2 pages (frames); only the first is used" in caplog.text
