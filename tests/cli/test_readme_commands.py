"""The README's documented command blocks, run as written in a copy of the project: every file they
change lies where the README promises.

A block is marked in README.md by a comment line `<!-- readme-test: NAME writes only under FOLDER/ -->`
just above its ```bash fence. The copy is hashed file by file before and after; the only other
changes allowed are the stores the README names beside the block (MLflow's, the decoded cache).
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers import REPO, TINY_AERIAL, merge

MARKER = re.compile(r"<!-- readme-test: (?P<name>[\w-]+) writes only under (?P<folder>\S+/) -->\n```bash\n(?P<block>.*?)\n```", re.S)
# What every training run writes besides its outputs, named in the README beside the block.
SHARED_STORES = ("mlflow.db", "mlflow.db.lock", "mlruns/", ".cache/segpipe/")


def documented_blocks() -> dict[str, tuple[str, str]]:
    """name -> (promised folder, the block's text) for every marked block of README.md."""
    return {m["name"]: (m["folder"], m["block"]) for m in MARKER.finditer((REPO / "README.md").read_text())}


def copy_project(target: Path) -> Path:
    """The project's files as a fresh clone has them (tracked and new, nothing git ignores)."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout.split("\0")
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            (target / name).write_bytes(source.read_bytes())
    return target


def snapshot(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under `root`."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def user_env() -> dict[str, str]:
    """The environment of a user at the project root: this venv's `python`, no test redirections."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    for name in ("MLFLOW_TRACKING_URI", "SEGPIPE_CACHE_DIR", "DVC_ROOT", "PYTHONPATH"):
        env.pop(name, None)
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # Python's own __pycache__ is not the commands' output
    return env


def test_the_readme_marks_the_aerial_walkthrough():
    assert documented_blocks()["aerial-by-hand"][0] == "runs/aerial/"


@pytest.mark.slow
def test_the_aerial_walkthrough_by_hand_changes_nothing_outside_runs_aerial(tmp_path):
    folder, block = documented_blocks()["aerial-by-hand"]
    project = copy_project(tmp_path / "project")
    env = user_env()
    # The sample the README makes just before, at test size, and the preset shrunk to seconds.
    subprocess.run([sys.executable, "-m", "pipeline", "sample", "data/aerial", "--kind", "aerial", "--count", "8",
                    "--size", "96", "--road-width", "3"], cwd=project, env=env, check=True, capture_output=True)
    preset = project / "params-aerial.yaml"
    preset.write_text(yaml.safe_dump(merge(yaml.safe_load(preset.read_text()), TINY_AERIAL), sort_keys=False))
    before = snapshot(project)

    done = subprocess.run(["bash", "-e", "-c", block], cwd=project, env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"{block}\n{done.stdout}\n{done.stderr}"

    after = snapshot(project)
    changed = sorted(name for name in before.keys() | after.keys() if before.get(name) != after.get(name))
    outside = [name for name in changed if not name.startswith((folder, *SHARED_STORES))]
    assert outside == [], f"the block changed files outside {folder}: {outside}"
    assert f"{folder}models/best.pt" in changed and f"{folder}train_info.json" in changed
