"""The shipped recipes (params-isic.yaml, params-isic-gpu.yaml, params-dubai.yaml) apply as presets.

That they name only existing keys, each with a value other than its default, is checked for every
shipped params-*.yaml by tests/test_presets.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from segpipe.config import load_params
from segpipe.presets import apply_presets, read_preset
from tests.helpers import REPO

RECIPES = ["params-isic.yaml", "params-isic-gpu.yaml", "params-dubai.yaml"]


@pytest.mark.parametrize("name", RECIPES)
def test_a_recipe_applies_to_params_yaml_and_loads(name, tmp_path: Path):
    params = tmp_path / "params.yaml"
    params.write_text((REPO / "params.yaml").read_text())
    changes = apply_presets(params, [REPO / name])
    assert len(changes) == len(read_preset(REPO / name))
    assert load_params(params).model_dump() == load_params(REPO / name).model_dump()


def test_the_isic_recipes_read_the_challenge_mask_names():
    for name in ("params-isic.yaml", "params-isic-gpu.yaml"):
        config = load_params(REPO / name)
        assert (config.data.format, config.data.mask_suffix) == ("masks", "_segmentation")
    assert load_params(REPO / "params-isic-gpu.yaml").model.backbone == "vgg16"
