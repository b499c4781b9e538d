"""`pip install .` gives a `segpipe` command equal to `python -m pipeline`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO

pytestmark = pytest.mark.slow  # builds and installs the package: seconds


def test_pip_install_gives_a_working_segpipe_command(tmp_path: Path):
    # A copy of what the package is built from, so the build leaves nothing in the checkout.
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source)
    for name in ("src", "pipeline"):
        shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    prefix = tmp_path / "installed"
    install = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index",
               "--prefix", str(prefix), str(source)]
    done = subprocess.run(install, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    site = next(prefix.glob("lib/python*/site-packages"))
    assert {"segpipe", "pipeline"} <= {p.name for p in site.iterdir()}

    # Run from elsewhere, with only the installed copy of segpipe and pipeline importable.
    env = {**os.environ, "PYTHONPATH": str(site)}
    work = tmp_path / "elsewhere"
    work.mkdir()
    helped = subprocess.run([str(prefix / "bin" / "segpipe"), "--help"], cwd=work, env=env, capture_output=True, text=True)
    assert helped.returncode == 0, helped.stderr
    assert "Usage: segpipe" in helped.stdout
    for command in ("convert", "split", "augment", "train", "evaluate", "predict", "compare"):
        assert command in helped.stdout
    sampled = subprocess.run(
        [str(prefix / "bin" / "segpipe"), "sample", "out", "--count", "1", "--size", "48"],
        cwd=work, env=env, capture_output=True, text=True,
    )
    assert sampled.returncode == 0, sampled.stderr
    assert (work / "out" / "lesion_000.json").is_file()
