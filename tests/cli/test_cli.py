"""The stage commands through Typer's CliRunner: arguments, params file, messages and exit codes."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeline.app import app
from tests.helpers import REPO

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def test_help_lists_every_stage():
    result = invoke("--help")
    assert result.exit_code == 0
    for command in ("sample", "convert", "split", "augment", "train"):
        assert command in result.output


@pytest.fixture
def lesions(tmp_path: Path) -> Path:
    result = invoke("sample", tmp_path / "raw", "--kind", "lesions", "--count", "6", "--size", "64", "--seed", "1")
    assert result.exit_code == 0, result.output
    return tmp_path / "raw"


def test_data_stages_chain_from_sample_to_augmented_set(lesions: Path, tmp_path: Path):
    params = REPO / "params.yaml"
    steps = [
        ("convert", lesions, tmp_path / "processed", "--metrics", tmp_path / "data.json", "--quiet"),
        ("split", tmp_path / "processed", tmp_path / "splits"),
        ("augment", tmp_path / "processed", tmp_path / "splits", tmp_path / "aug", "--quiet"),
    ]
    for step in steps:
        result = invoke(*step, "--params", params)
        assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "data.json").read_text())["images"] == 6
    train = (tmp_path / "splits" / "train.txt").read_text().split()
    assert len(list((tmp_path / "aug" / "masks").glob("*.png"))) == 2 * len(train)


def test_aerial_sample_writes_images_and_colour_masks(tmp_path: Path):
    result = invoke("sample", tmp_path / "aerial", "--kind", "aerial", "--count", "2", "--size", "64")
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "aerial" / "images").glob("*.jpg"))) == 2
    assert len(list((tmp_path / "aerial" / "masks").glob("*.png"))) == 2


def test_bad_input_exits_1_with_the_file_named_and_leaves_no_output(lesions: Path, tmp_path: Path):
    (lesions / "lesion_002.json").write_text("{not json")
    out = tmp_path / "processed"
    result = invoke("convert", lesions, out, "--metrics", tmp_path / "data.json", "--params", REPO / "params.yaml")
    assert result.exit_code == 1
    assert "lesion_002.json" in result.output
    assert "Traceback" not in result.output
    assert not out.exists() and not (tmp_path / "data.json").exists()


def test_bad_params_file_exits_1_naming_the_key(tmp_path: Path):
    params = tmp_path / "params.yaml"
    params.write_text("split:\n  val_fraction: 0.1\n  sead: 3\n")
    result = invoke("split", tmp_path, tmp_path / "splits", "--params", params)
    assert result.exit_code == 1
    assert "unknown key 'split.sead'" in result.output


def test_missing_stage_input_exits_1(tmp_path: Path):
    result = invoke("split", tmp_path / "nowhere", tmp_path / "splits", "--params", REPO / "params.yaml")
    assert result.exit_code == 1
    assert "manifest.csv: not found" in result.output


@pytest.mark.parametrize(
    ("train", "message"),
    [
        ("sampling: patches\n  patch_size: 40", "train.patch_size 40 must be a multiple of 16 for model.backbone plain"),
        ("sampling: patches\n  patch_scale: 0", "train.patch_scale: Input should be greater than 0"),
        ("sampling: tiles", "train.sampling: Input should be 'letterbox' or 'patches'"),
    ],
    ids=["off-stride", "scale", "unknown"],
)
def test_bad_patch_settings_stop_train_before_data_is_read_or_a_run_started(
    tmp_path: Path, processed: Path, mlflow_env: Path, monkeypatch, train: str, message: str
):
    import segpipe.layout

    def no_reading(*args, **kwargs):
        raise AssertionError("the training data was read before the settings were checked")

    monkeypatch.setattr(segpipe.layout, "training_samples", no_reading)
    monkeypatch.setattr(segpipe.layout, "validation_samples", no_reading)
    params = tmp_path / "params.yaml"
    params.write_text(f"train:\n  {train}\n")
    models = tmp_path / "models"
    result = invoke("train", processed, tmp_path / "splits", tmp_path / "aug", models, "--params", params, "--quiet")
    assert result.exit_code == 1, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not mlflow_env.exists()  # no MLflow run, not even an empty store
    assert not (models / "mlflow_run_id.txt").exists()


def test_aerial_sample_takes_a_road_width_and_lesions_refuse_it(tmp_path: Path):
    result = invoke("sample", tmp_path / "thin", "--kind", "aerial", "--count", "1", "--size", "64", "--road-width", "2")
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "thin" / "masks").glob("*.png"))) == 1
    result = invoke("sample", tmp_path / "l", "--kind", "lesions", "--count", "1", "--road-width", "2")
    assert result.exit_code == 1 and "--road-width applies to --kind aerial only" in result.output
    assert not (tmp_path / "l").exists()
