"""Nothing the user had is lost: every command that publishes a folder refuses, through the real
CLI and before touching anything, an output that is, holds or lies inside one of its inputs, and a
folder that holds files it did not write."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeline.app import app
from tests.helpers import REPO, tiny_checkpoint

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under root (the folder itself included) with its bytes (None for folders)."""
    return {str(p.relative_to(root)): None if p.is_dir() else p.read_bytes() for p in [root, *root.rglob("*")]}


@pytest.fixture
def project(tmp_path: Path, monkeypatch) -> Path:
    """data/s: 6 labelme samples, plus a notes file elsewhere under data/; params with 1 worker."""
    monkeypatch.chdir(tmp_path)
    assert invoke("sample", "data/s", "--count", "6", "--size", "48").exit_code == 0
    (tmp_path / "data" / "README.txt").write_text("my notes on the data")
    (tmp_path / "params.yaml").write_text("data:\n  workers: 1\n")
    return tmp_path


def refused(result, out: str, relation: str, source: str, name: str) -> bool:
    return result.exit_code == 1 and f"the output {out} ({name}) {relation} the input {source}" in result.output


@pytest.mark.parametrize(
    ("input_dir", "out", "relation"),
    [("data/s", "data", "contains"), ("data/s", "data/s", "is"), ("data", "data/processed", "lies inside")],
)
def test_convert_into_or_around_its_input_is_refused_and_touches_nothing(project, input_dir, out, relation):
    before = snapshot(project / "data")
    result = invoke("convert", input_dir, out, "--metrics", "m/data.json", "--quiet")
    assert refused(result, out, relation, input_dir, "OUT_DIR"), result.output
    assert snapshot(project / "data") == before
    assert not (project / "m").exists()


def test_convert_through_python_dash_m_refuses_to_replace_the_folder_of_its_input(project):
    before = snapshot(project / "data")
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", "convert", "data/s", "data", "--quiet"],
        cwd=project, env={"PYTHONPATH": str(REPO), "PATH": ""}, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 1 and "the output data (OUT_DIR) contains the input data/s (INPUT_DIR)" in done.stderr
    assert snapshot(project / "data") == before


def test_convert_metrics_written_into_the_input_is_refused(project):
    result = invoke("convert", "data/s", "data/processed", "--metrics", "data/s/data.json")
    assert refused(result, "data/s/data.json", "lies inside", "data/s", "--metrics"), result.output


@pytest.fixture
def processed(project: Path) -> Path:
    assert invoke("convert", "data/s", "data/processed", "--metrics", "m/data.json", "--quiet").exit_code == 0
    assert invoke("split", "data/processed", "data/splits").exit_code == 0
    return project


@pytest.mark.parametrize(("out", "relation"), [("data/processed", "is"), ("data", "contains"), ("data/processed/splits", "lies inside")])
def test_split_into_or_around_its_input_is_refused(processed, out, relation):
    before = snapshot(processed / "data")
    result = invoke("split", "data/processed", out)
    assert refused(result, out, relation, "data/processed", "SPLITS_DIR"), result.output
    assert snapshot(processed / "data") == before


@pytest.mark.parametrize(("out", "source", "name"), [("data/processed", "data/processed", "PROCESSED_DIR"), ("data/splits", "data/splits", "SPLITS_DIR")])
def test_augment_into_an_input_is_refused(processed, out, source, name):
    before = snapshot(processed / "data")
    result = invoke("augment", "data/processed", "data/splits", out, "--quiet")
    assert result.exit_code == 1 and f"the output {out} (OUT_DIR) is the input {source} ({name})" in result.output
    assert snapshot(processed / "data") == before


@pytest.mark.parametrize(("option", "value"), [("MODELS_DIR", "data/processed"), ("--plots-dir", "data")])
def test_train_writing_into_its_data_is_refused_before_anything_starts(processed, option, value):
    before = snapshot(processed / "data")
    args = ["train", "data/processed", "data/splits", "data/aug", "data/processed" if option == "MODELS_DIR" else "models"]
    if option != "MODELS_DIR":
        args += [option, value]
    result = invoke(*args, "--quiet")
    assert result.exit_code == 1 and f"the output {value} ({option})" in result.output, result.output
    assert snapshot(processed / "data") == before
    assert not (processed / "mlflow.db").exists() and not (processed / "models").exists()


def test_evaluate_plots_into_the_checkpoint_folder_is_refused(processed):
    checkpoint = tiny_checkpoint(processed / "models" / "best.pt")
    before = snapshot(processed / "models")
    result = invoke("evaluate", checkpoint, "data/processed", "data/splits", "--plots-dir", "models", "--quiet")
    assert result.exit_code == 1 and "the output models (--plots-dir) contains the input" in result.output, result.output
    assert snapshot(processed / "models") == before


def test_predict_into_the_folder_of_its_images_or_onto_a_file_is_refused(processed):
    checkpoint = tiny_checkpoint(processed / "models" / "best.pt")
    before = snapshot(processed / "data")
    result = invoke("predict", checkpoint, "data/processed/images", "--out", "data/processed/images", "--device", "cpu", "-q")
    assert result.exit_code == 1 and "(--out) contains the input" in result.output
    result = invoke("predict", checkpoint, "data/processed/images", "--out", "data/README.txt", "--device", "cpu", "-q")
    assert result.exit_code == 1 and "--out data/README.txt is a file" in result.output and "Traceback" not in result.output
    assert snapshot(processed / "data") == before


@pytest.mark.parametrize("out", ["data", "."])
def test_sample_does_not_replace_a_folder_of_other_files(project, out):
    before = snapshot(project)
    result = invoke("sample", out, "--count", "2", "--size", "48")
    assert result.exit_code == 1, result.output
    assert "did not write" in result.output or "the current folder" in result.output
    assert snapshot(project) == before


def test_an_output_folder_of_someone_elses_files_is_refused(project):
    (project / "thesis").mkdir()
    (project / "thesis" / "chapter1.tex").write_text("months of work")
    result = invoke("convert", "data/s", "thesis", "--metrics", "m/data.json", "--quiet")
    assert result.exit_code == 1 and "thesis: holds chapter1.tex, which this command did not write" in result.output
    assert (project / "thesis" / "chapter1.tex").read_text() == "months of work"


def test_rerunning_a_command_still_replaces_its_own_output(processed):
    result = invoke("convert", "data/s", "data/processed", "--metrics", "m/data.json", "--quiet")
    assert result.exit_code == 0, result.output
    result = invoke("split", "data/processed", "data/splits")
    assert result.exit_code == 0 and "val (" in result.output
