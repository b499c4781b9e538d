from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from segpipe.config import Params, load_params, parse_params
from segpipe.errors import SegpipeError
from segpipe.training.stage import check_model_input
from tests.helpers import REPO


def test_shipped_params_file_loads():
    params = load_params(REPO / "params.yaml")
    assert params.base.classes[0] == "background"
    assert params.split.val_fraction == pytest.approx(0.1)


def test_yaml_lists_become_tuples_and_sections_are_frozen():
    params = parse_params({"augment": {"blur_sigma": [0.5, 1.0]}})
    assert params.augment.blur_sigma == (0.5, 1.0)
    with pytest.raises(ValidationError, match="Instance is frozen"):
        params.augment.copies = 5  # type: ignore[misc]


def test_unknown_key_is_named_with_its_section(tmp_path: Path):
    path = tmp_path / "params.yaml"
    path.write_text("augment:\n  copys: 3\n")
    with pytest.raises(SegpipeError, match=r"params.yaml: unknown key 'augment.copys'"):
        load_params(path)


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"augment": {"copies": "3"}}, "augment.copies"),
        ({"base": {"seed": 1.5}}, "base.seed"),
        ({"augment": {"enabled": 1}}, "augment.enabled"),
        ({"data": {"format": "coco"}}, "data.format"),
        ({"split": {"val_fraction": 1.0}}, "split.val_fraction"),
    ],
)
def test_wrong_type_or_value_names_the_key(data, key):
    with pytest.raises(SegpipeError, match=key.replace(".", r"\.")):
        parse_params(data)


def test_fold_must_be_below_folds():
    with pytest.raises(SegpipeError, match="fold must be below folds"):
        parse_params({"split": {"folds": 3, "fold": 3}})


def test_mask_colors_must_name_known_classes():
    with pytest.raises(SegpipeError, match=r"params.yaml: data\.mask_colors\.tumour: 'tumour' is not in base\.classes"):
        parse_params({"data": {"format": "masks", "mask_colors": {"tumour": 255}}})


def test_mask_colors_are_not_checked_for_labelme_files():
    # "Bring your own data" with labelme: new classes, mask_colors left at the sample's values.
    params = parse_params({"base": {"classes": ["background", "building"]}, "data": {"format": "labelme"}})
    assert params.base.classes == ("background", "building")
    with pytest.raises(SegpipeError, match=r"'lesion' is not in base\.classes"):
        parse_params({"base": {"classes": ["background", "building"]}, "data": {"format": "masks"}})


def test_mask_colour_errors_name_the_params_file_that_was_passed(tmp_path: Path):
    path = tmp_path / "aerial.yaml"
    path.write_text("data:\n  format: masks\n  mask_colors: {background: 0, lesion: '#000000'}\n")
    with pytest.raises(SegpipeError) as info:
        load_params(path)
    message = str(info.value)
    assert message.startswith(f"{path}: data.mask_colors.lesion: value '#000000' is also given to 'background'")
    assert "params.yaml" not in message and "Value error" not in message


def test_params_nested_thousands_of_levels_deep_are_a_named_error(tmp_path: Path):
    path = tmp_path / "deep.yaml"
    path.write_text("base: " + "[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(SegpipeError, match=r"deep\.yaml: nested too deeply"):
        load_params(path)


def test_duplicate_class_names_rejected():
    with pytest.raises(SegpipeError, match="unique"):
        parse_params({"base": {"classes": ["background", "lesion", "lesion"]}})


def test_missing_and_malformed_files_are_named(tmp_path: Path):
    with pytest.raises(SegpipeError, match="params file not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("base: [unclosed\n")
    with pytest.raises(SegpipeError, match="bad.yaml: not valid YAML"):
        load_params(bad)


def test_a_loaded_file_keeps_how_it_spelt_each_value(tmp_path: Path):
    path = tmp_path / "params.yaml"
    path.write_text(
        "base:\n  experiment: \"my run\"   # quoted\n  classes:\n    - bg\n    - fg\n"
        "augment:\n  rotate_limit: 30\n  blur_sigma: [0.3,\n    1.5]\n"
        "data:\n  mask_colors: {bg: 0, fg: \"#FF0000\"}\n"
    )
    params = load_params(path)
    assert params.augment.rotate_limit == 30.0
    assert params.spelling == {
        "base.experiment": "my run",
        "base.classes": "[bg, fg]",
        "augment.rotate_limit": "30",
        "augment.blur_sigma": "[0.3, 1.5]",
        "data.mask_colors.bg": "0",
        "data.mask_colors.fg": "#FF0000",
    }
    assert parse_params({"augment": {"rotate_limit": 30}}).spelling == {}  # not from a file


@pytest.mark.parametrize(
    ("train", "message"),
    [
        ({"sampling": "tiles"}, r"train\.sampling: Input should be 'letterbox' or 'patches'"),
        ({"patch_scale": 0.0}, r"train\.patch_scale: Input should be greater than 0"),
        ({"patch_scale": -0.5}, r"train\.patch_scale: Input should be greater than 0"),
        ({"patches_per_image": 0}, r"train\.patches_per_image"),
        ({"patch_class_balance": 1.5}, r"train\.patch_class_balance"),
    ],
)
def test_bad_patch_settings_are_named(train, message):
    with pytest.raises(SegpipeError, match=message):
        parse_params({"train": train})


@pytest.mark.parametrize(
    ("backbone", "size", "message"),
    [
        ("plain", 40, r"train\.patch_size 40 must be a multiple of 16 for model\.backbone plain .*try 48"),
        ("resnet50", 48, r"train\.patch_size 48 must be a multiple of 32 for model\.backbone resnet50 .*try 64"),
    ],
)
def test_a_patch_size_off_the_model_stride_is_refused_before_training(tmp_path: Path, backbone, size, message):
    path = tmp_path / "params.yaml"
    path.write_text(f"model:\n  backbone: {backbone}\ntrain:\n  sampling: patches\n  patch_size: {size}\n")
    with pytest.raises(SegpipeError, match=message):
        check_model_input(load_params(path))


def test_the_patch_size_is_only_checked_when_training_on_patches():
    check_model_input(parse_params({"train": {"patch_size": 40}}))  # letterbox: image_size 96 is checked
    with pytest.raises(SegpipeError, match=r"train\.patch_size 40 must be a multiple of 16"):
        check_model_input(parse_params({"train": {"sampling": "patches", "patch_size": 40}}))


def leaves(data: dict, prefix: str = "") -> dict[str, object]:
    """Every setting of a params mapping under its flat key (mask_colors is one setting)."""
    flat: dict[str, object] = {}
    for key, value in data.items():
        if isinstance(value, dict) and key != "mask_colors":
            flat.update(leaves(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def test_the_library_defaults_are_the_values_params_yaml_gives():
    # Each setting is defined once: a key left out of a params file means what params.yaml says.
    shipped = leaves(yaml.safe_load((REPO / "params.yaml").read_text()))
    defaults = leaves(Params().model_dump(mode="json"))
    assert sorted(shipped) == sorted(defaults), "params.yaml and config.py name different keys"
    differ = {key: (defaults[key], shipped[key]) for key in defaults if defaults[key] != shipped[key]}
    assert not differ, f"config.py default vs params.yaml: {differ}"
