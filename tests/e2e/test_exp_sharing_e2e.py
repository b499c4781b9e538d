"""Experiments across machines: two clones of one project share a bare git remote and a DVC remote
(a folder); an experiment run and pushed in one is pulled, listed and applied, outputs included,
in the other."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import TINY, make_project, merge, run

pytestmark = pytest.mark.slow  # one DVC experiment of the whole pipeline: about a minute


def experiments_in(project: Path) -> dict[str, dict]:
    """name -> data of every named experiment `dvc exp show --json` lists in `project`."""
    shown = json.loads(run(["dvc", "exp", "show", "--json"], project))
    return {
        rev["name"]: rev["data"]
        for baseline in shown for experiment in baseline.get("experiments") or [] for rev in experiment["revs"]
        if rev.get("name")
    }


@pytest.fixture(scope="module")
def clones(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Clone A ran experiment `seed3` and pushed it; clone B, cloned before it ran, pulled it."""
    base = tmp_path_factory.mktemp("sharing")
    a = make_project(base / "a", overrides=merge(TINY, {"train": {"device": "cpu"}}))
    run(["git", "init", "-q", "--bare", str(base / "origin.git")], base)
    run(["git", "remote", "add", "origin", str(base / "origin.git")], a)
    run(["dvc", "remote", "add", "-d", "storage", str(base / "dvc-storage")], a)
    run(["git", "commit", "-qam", "a DVC remote"], a)
    run(["git", "push", "-q", "origin", "HEAD"], a)
    b = base / "b"
    run(["git", "clone", "-q", str(base / "origin.git"), str(b)], base)
    run(["git", "config", "user.email", "b@example.com"], b)
    run(["git", "config", "user.name", "b"], b)

    run(["dvc", "exp", "run", "--name", "seed3", "-S", "base.seed=3"], a)
    run(["dvc", "exp", "push", "origin", "seed3"], a)
    assert "seed3" not in experiments_in(b)
    run(["dvc", "exp", "pull", "origin", "seed3"], b)
    return a, b


def test_a_pushed_experiment_shows_in_the_other_clone_with_its_params_and_metrics(clones):
    a, b = clones
    there = experiments_in(b)["seed3"]
    assert there["params"]["params.yaml"]["data"]["base"]["seed"] == 3
    evaluated = json.loads((a / "metrics" / "eval.json").read_text())  # A's workspace holds the run's results
    assert there["metrics"]["metrics/eval.json"]["data"]["miou"] == evaluated["miou"]


def test_applying_it_in_the_other_clone_brings_its_outputs(clones):
    a, b = clones
    assert not (b / "models").exists()
    run(["dvc", "exp", "apply", "seed3"], b)
    run(["dvc", "pull"], b)
    assert (b / "models" / "best.pt").read_bytes() == (a / "models" / "best.pt").read_bytes()
    assert (b / "metrics" / "eval.json").read_text() == (a / "metrics" / "eval.json").read_text()
    assert "up to date" in run(["dvc", "status"], b)
