"""Each stage's output also goes to a log file (`--log`, set for every stage in dvc.yaml)."""

from __future__ import annotations

import io
from pathlib import Path

import yaml
from typer.testing import CliRunner

from pipeline.app import app
from pipeline.common import _Tee
from tests.helpers import REPO

runner = CliRunner()


def test_a_stage_writes_what_it_prints_and_its_error_to_the_log(tmp_path: Path):
    log = tmp_path / "logs" / "sample.log"
    done = runner.invoke(app, ["sample", str(tmp_path / "s"), "--count", "1", "--size", "48", "--log", str(log)])
    assert done.exit_code == 0, done.output
    assert log.read_text() == "sample: wrote 1 lesions images -> " + str(tmp_path / "s") + "\n"
    failed = runner.invoke(app, ["convert", str(tmp_path / "missing"), str(tmp_path / "out"), "--log", str(log)])
    assert failed.exit_code == 1
    assert log.read_text() == f"error: {tmp_path / 'missing'}: input folder not found\n"  # replaced, not appended


def test_only_torchruns_rank_0_writes_the_log(tmp_path: Path, monkeypatch):
    args = ["sample", str(tmp_path / "s"), "--count", "1", "--size", "48", "--log"]
    monkeypatch.setenv("RANK", "1")
    done = runner.invoke(app, [*args, str(tmp_path / "rank1.log")])
    assert done.exit_code == 0, done.output
    assert not (tmp_path / "rank1.log").exists()
    monkeypatch.setenv("RANK", "0")
    assert runner.invoke(app, [*args, str(tmp_path / "rank0.log")]).exit_code == 0
    assert (tmp_path / "rank0.log").read_text().startswith("sample: wrote 1 lesions images")


def test_a_progress_bar_leaves_its_last_state_in_the_log_without_colours():
    screen, log = io.StringIO(), io.StringIO()
    tee = _Tee(screen, log)
    tee.write("epochs  10%\repochs  50%\repochs 100%\n\x1b[31merror: bad\x1b[0m\nno newline")
    tee.finish()
    assert log.getvalue() == "epochs 100%\nerror: bad\nno newline\n"
    assert screen.getvalue().startswith("epochs  10%\repochs  50%")  # the terminal gets everything


def test_every_stage_logs_to_logs_stage_log_which_dvc_tracks():
    for name, stage in yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"].items():
        outs = {out if isinstance(out, str) else next(iter(out)) for out in stage["outs"]}
        assert stage["cmd"].rstrip().endswith(f"--log logs/{name}.log") and f"logs/{name}.log" in outs, name
    assert set((REPO / "logs" / ".gitignore").read_text().split()) == {f"/{n}.log" for n in
                                                                         ("convert", "split", "augment", "train", "evaluate")}
