"""`pip install .` gives a `segpipe` command equal to `python -m pipeline`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import REPO

pytestmark = pytest.mark.slow  # builds and installs the package: seconds


def package_source(tmp_path: Path) -> Path:
    """A copy of what the package is built from, so the build leaves nothing in the checkout."""
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source)
    for name in ("src", "pipeline"):
        shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    return source


def test_pip_install_gives_a_working_segpipe_command(tmp_path: Path):
    source = package_source(tmp_path)
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


def declared_closure() -> set[str]:
    """pyproject's dependencies and, through installed metadata, everything they require (markers
    evaluated here, extras not taken): the distributions a clean `pip install` of the wheel gets."""
    import importlib.metadata as metadata
    import tomllib

    from packaging.requirements import Requirement

    todo = [Requirement(d) for d in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]]
    seen: set[str] = set()
    while todo:
        requirement = todo.pop()
        name = requirement.name.lower()
        if name in seen or (requirement.marker and not requirement.marker.evaluate({"extra": ""})):
            continue
        seen.add(name)
        todo += [Requirement(r) for r in metadata.distribution(name).requires or []]
    return seen


def site_of(names: set[str], folder: Path) -> Path:
    """A folder of links to the installed files of the distributions `names` only (top-level
    packages, modules and .dist-info): a site-packages that holds what they would install."""
    import importlib.metadata as metadata

    folder.mkdir()
    for name in names:
        dist = metadata.distribution(name)
        for top in {Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith("..")}:
            target = Path(dist.locate_file(top))
            if target.exists() and not (folder / top).exists():
                (folder / top).symlink_to(target)
    return folder


def test_the_wheel_in_a_clean_environment_serves_with_its_declared_dependencies(tmp_path: Path):
    """The wheel, installed without its dependencies into a venv that sees no other packages, plus
    exactly the distributions pyproject declares (and theirs): `segpipe serve` answers /health.
    Offline: nothing is downloaded, the installed packages are linked."""
    import json
    import urllib.request

    from tests.helpers import free_port, tiny_checkpoint

    source = package_source(tmp_path)
    pip = [sys.executable, "-m", "pip"]
    built = subprocess.run([*pip, "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index", "-w",
                            str(tmp_path / "wheels"), str(source)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    wheel = next((tmp_path / "wheels").glob("segpipe-*.whl"))
    venv = tmp_path / "clean"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    installed = subprocess.run([*pip, "--python", str(venv / "bin" / "python"), "install", "-q", "--no-deps",
                                "--no-index", str(wheel)], capture_output=True, text=True, timeout=300)
    assert installed.returncode == 0, installed.stderr
    site = next(venv.glob("lib/python*/site-packages"))
    (site / "declared_dependencies.pth").write_text(str(site_of(declared_closure(), tmp_path / "deps")) + "\n")

    work = tmp_path / "elsewhere"
    work.mkdir()
    shutil.copy(REPO / "params.yaml", work)
    checkpoint = tiny_checkpoint(work / "best.pt")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    server = subprocess.Popen([str(venv / "bin" / "segpipe"), "serve", str(checkpoint), "--port", str(port)],
                              cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        health = None
        deadline = time.monotonic() + 90
        while health is None and server.poll() is None and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                    health = json.loads(response.read())
            except OSError:
                time.sleep(0.5)
        if health is None:
            server.kill()
            pytest.fail(f"segpipe serve did not answer /health:\n{server.communicate(timeout=10)[0]}")
        assert [c["name"] for c in health["classes"]] == ["background", "lesion"]
    finally:
        server.terminate()
        server.wait(timeout=30)
