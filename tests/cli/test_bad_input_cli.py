"""Bad input through the CLI: messages name the file that was passed, exit 1, no traceback."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from pipeline.app import app
from tests.helpers import make_processed, tiny_checkpoint

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_a_params_error_names_the_file_passed_with_params(tmp_path: Path):
    params = tmp_path / "aerial-params.yaml"
    params.write_text("data:\n  format: masks\n  mask_colors: {background: 7, lesion: 7}\n")
    result = invoke("convert", tmp_path, tmp_path / "out", "--params", params)
    assert result.exit_code == 1
    assert f"{params}: data.mask_colors.lesion: value 7 is also given to 'background'" in result.output
    assert "params.yaml:" not in result.output.replace("aerial-params.yaml", "")


def test_split_reports_the_realised_validation_fraction(tmp_path: Path):
    make_processed(tmp_path / "processed", count=6)
    params = tmp_path / "p.yaml"
    params.write_text("split:\n  val_fraction: 0.25\n")
    result = invoke("split", tmp_path / "processed", tmp_path / "splits", "--params", params)
    assert result.exit_code == 0, result.output
    assert "split: 4 train, 2 val (33.3% of 6; val_fraction 0.25)" in result.output  # 1.5 rounds up to 2


def test_evaluate_compares_the_checkpoint_classes_with_the_params(tmp_path: Path):
    processed = make_processed(tmp_path / "processed", count=2)
    (tmp_path / "splits").mkdir()
    (tmp_path / "splits" / "val.txt").write_text("img000\n")
    checkpoint = tiny_checkpoint(tmp_path / "best.pt", classes=("background", "lesion"))
    params = tmp_path / "p.yaml"
    params.write_text("base:\n  classes: [background, building, road]\nevaluate:\n  device: cpu\n")
    result = invoke("evaluate", checkpoint, processed, tmp_path / "splits", "--params", params,
                    "--metrics", tmp_path / "m" / "eval.json", "--plots-dir", tmp_path / "plots", "-q")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "trained on classes ['background', 'lesion'] but base.classes is ['background', 'building', 'road']" in result.output
    assert not (tmp_path / "m").exists()


def test_deeply_nested_json_is_a_one_line_error(tmp_path: Path):
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    result = invoke("convert", tmp_path / "raw", tmp_path / "out", "--metrics", tmp_path / "d.json")
    assert result.exit_code == 1 and "deep.json: JSON nested too deeply" in result.output
    assert "RecursionError" not in result.output and "Traceback" not in result.output
