"""A convert killed mid-run (SIGKILL or SIGTERM) through a real `python -m pipeline` subprocess:
its pool workers die with it, nothing it wrote survives the next run, and a caller reading its
output is not left waiting. One input is a FIFO that nobody writes, so a worker is stuck on it and
the run is reliably still going when it is killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeline.app import app
from segpipe.prep.synthetic import make_lesions
from tests.helpers import REPO

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc and FIFOs")


def children(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found.update(int(c) for c in (task / "children").read_text().split())
        except OSError:
            pass
    return found


def gone(pid: int) -> bool:
    """Exited: no such process, or a zombie waiting to be reaped."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def wait_for(condition, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def stuck_input(tmp_path: Path) -> tuple[Path, Path]:
    """20 lesion samples and one labelme file whose picture is a FIFO that blocks whoever reads it;
    and a params file with two convert workers."""
    raw = tmp_path / "raw"
    make_lesions(raw, count=20, size=48, seed=0)
    os.mkfifo(raw / "zz_stuck.jpg")
    (raw / "zz_stuck.json").write_text('{"shapes": [], "imagePath": "zz_stuck.jpg", "imageData": null}')
    params = tmp_path / "params.yaml"
    params.write_text("data:\n  workers: 2\n")
    return raw, params


def start_convert(raw: Path, params: Path, out: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "pipeline", "convert", str(raw), str(out), "--metrics", str(out.parent / "data.json"),
               "--params", str(params), "--quiet"]
    return subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM])
def test_killed_convert_takes_its_workers_along_and_the_next_run_tidies_up(stuck_input, tmp_path, signum):
    raw, params = stuck_input
    out = tmp_path / "processed"
    process = start_convert(raw, params, out)
    workers: set[int] = set()
    try:
        wait_for(lambda: len(children(process.pid)) >= 2 and any(tmp_path.glob(".processed.tmp-*")), 120, "two workers")
        workers = children(process.pid)
        process.send_signal(signum)
        # Returns only once every holder of the pipes (the workers included) has exited.
        stdout, stderr = process.communicate(timeout=30)
        assert process.returncode == -signum if signum == signal.SIGKILL else process.returncode == 128 + signum, stderr
        wait_for(lambda: all(gone(pid) for pid in workers), 30, "the workers to exit")
        if signum == signal.SIGTERM:  # unwound in the process itself: its temporary folder is gone already
            assert not list(tmp_path.glob(".processed.tmp-*")), stderr
            assert b"Traceback" not in stderr
    finally:
        for pid in {process.pid, *workers}:
            if not gone(pid):
                os.kill(pid, signal.SIGKILL)
        process.wait(timeout=30)

    (raw / "zz_stuck.json").unlink()
    (raw / "zz_stuck.jpg").unlink()
    result = CliRunner().invoke(app, ["convert", str(raw), str(out), "--metrics", str(tmp_path / "data.json"),
                                      "--params", str(params), "--quiet"])
    assert result.exit_code == 0, result.output
    assert len(list((out / "masks").glob("*.png"))) == 20
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.json", "params.yaml", "processed", "raw"]
