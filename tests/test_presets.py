"""Presets: a file naming a few settings, written into params.yaml over the defaults."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from pipeline.app import app
from segpipe.config import Params, load_params
from segpipe.errors import SegpipeError
from segpipe.presets import apply_presets, leaves
from tests.helpers import REPO

runner = CliRunner()


@pytest.fixture
def params_file(tmp_path: Path) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text((REPO / "params.yaml").read_text())
    return path


def preset(tmp_path: Path, text: str, name: str = "preset.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_a_preset_changes_its_keys_and_keeps_every_other_line_and_comment(tmp_path: Path, params_file: Path):
    before = params_file.read_text().splitlines()
    changes = apply_presets(params_file, [preset(tmp_path, "train:\n  epochs: 3\n  loss:\n    ce: 0.5\n")])
    assert changes == [("train.epochs", 10, 3), ("train.loss.ce", 0.0, 0.5)]
    after = params_file.read_text().splitlines()
    changed = [(old, new) for old, new in zip(before, after) if old != new]
    assert len(before) == len(after) and len(changed) == 2
    assert changed[0][1].startswith("  epochs: 3") and "# in total, frozen epochs included" in changed[0][1]
    assert changed[1][1].strip() == "ce: 0.5"
    loaded = load_params(params_file)
    assert loaded.train.epochs == 3 and loaded.train.loss.ce == 0.5 and loaded.train.loss.dice == 1.0


def test_applying_the_same_preset_again_changes_nothing(tmp_path: Path, params_file: Path):
    aerial = REPO / "params-aerial.yaml"
    apply_presets(params_file, [aerial])
    written = params_file.read_bytes()
    assert apply_presets(params_file, [aerial]) == []
    assert params_file.read_bytes() == written


def test_a_later_preset_resets_what_an_earlier_one_set_but_it_does_not_name(tmp_path: Path, params_file: Path):
    apply_presets(params_file, [REPO / "params-aerial.yaml"])
    assert load_params(params_file).train.sampling == "patches"
    apply_presets(params_file, [preset(tmp_path, "train:\n  epochs: 3\n")])
    loaded = load_params(params_file)
    assert loaded.train.sampling == "letterbox" and loaded.base.classes == ("background", "lesion")
    assert loaded.data.mask_colors == {"background": 0, "lesion": 255}  # replaced whole, not merged
    assert loaded.train.epochs == 3


def test_presets_apply_in_order_the_last_one_winning(tmp_path: Path, params_file: Path):
    first = preset(tmp_path, "train:\n  epochs: 3\n  lr: 0.1\n", "first.yaml")
    second = preset(tmp_path, "train:\n  epochs: 5\n", "second.yaml")
    apply_presets(params_file, [first, second])
    loaded = load_params(params_file)
    assert (loaded.train.epochs, loaded.train.lr) == (5, 0.1)


def test_an_unknown_key_names_the_preset_and_leaves_params_yaml_untouched(tmp_path: Path, params_file: Path):
    before = params_file.read_bytes()
    bad = preset(tmp_path, "train:\n  epoch: 3\n")
    with pytest.raises(SegpipeError, match=r"preset\.yaml: unknown key 'train\.epoch'"):
        apply_presets(params_file, [bad])
    assert params_file.read_bytes() == before


def test_presets_that_clash_together_are_refused_naming_both(tmp_path: Path, params_file: Path):
    before = params_file.read_bytes()
    classes = preset(tmp_path, "base:\n  classes: [bg, a, b]\n", "classes.yaml")
    weights = preset(tmp_path, "train:\n  class_weights: [1.0, 2.0]\n", "weights.yaml")
    with pytest.raises(SegpipeError, match=r"classes\.yaml, .*weights\.yaml: .*class_weights has 2 values"):
        apply_presets(params_file, [classes, weights])
    assert params_file.read_bytes() == before


@pytest.mark.parametrize("shipped", sorted(p.name for p in REPO.glob("params-*.yaml")))
def test_each_shipped_preset_names_only_settings_that_differ_from_the_defaults(shipped: str):
    data = yaml.safe_load((REPO / shipped).read_text())
    defaults = dict(leaves(Params, Params().model_dump(mode="json")))
    typed = load_params(REPO / shipped).model_dump(mode="json")
    for key, _ in leaves(Params, data):
        value = typed
        for part in key:
            value = value[part]
        assert value != defaults[key], f"{shipped}: {'.'.join(key)} repeats its default {value!r}"


def test_the_preset_command_lists_its_changes_and_a_bad_preset_exits_1(tmp_path: Path, params_file: Path):
    good = preset(tmp_path, "model:\n  cbam: true\n")
    result = runner.invoke(app, ["preset", str(good), "--params", str(params_file)])
    assert result.exit_code == 0, result.output
    assert "model.cbam: False -> True" in result.output and "(1 change(s))" in result.output
    assert load_params(params_file).model.cbam is True
    bad = preset(tmp_path, "model: [1, 2]\n", "bad.yaml")
    result = runner.invoke(app, ["preset", str(bad), "--params", str(params_file)])
    assert result.exit_code == 1 and "bad.yaml" in result.output
