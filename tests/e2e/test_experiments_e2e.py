"""The README's baseline-vs-enhanced walk-through, on a tiny configuration in a temporary repo."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest

from tests.helpers import REPO, TINY, make_project, merge, run, run_env

pytestmark = pytest.mark.slow  # DVC runs of the whole pipeline: minutes

# Enough validation images for compare to give a verdict (it needs 5).
SETTINGS = merge(TINY, {"split": {"val_fraction": 0.3}})


def experiments_in(show: list[dict]) -> dict[str, dict]:
    """name -> data of every experiment in `dvc exp show --json`."""
    found = {}
    for baseline in show:
        for experiment in baseline.get("experiments") or []:
            for rev in experiment["revs"]:
                if rev.get("name"):
                    found[rev["name"]] = rev["data"]
    return found


def wait_for_queue(project: Path, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = run(["dvc", "queue", "status"], project)
        if "Queued" not in status and "Running" not in status:
            assert "Failed" not in status, status
            return
        time.sleep(3)
    pytest.fail(f"the queue did not finish in {timeout} s:\n{status}")


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = make_project(tmp_path_factory.mktemp("exp") / "project", images=30, overrides=SETTINGS)
    run(["dvc", "exp", "run", "-n", "baseline", "-S", "augment.enabled=false", "-S", "model.cbam=false"], root)
    run(["dvc", "exp", "run", "-n", "enhanced", "-S", "augment.enabled=true", "-S", "model.cbam=true"], root)
    return root


def test_exp_show_holds_both_experiments_with_params_and_eval_metrics(project: Path):
    found = experiments_in(json.loads(run(["dvc", "exp", "show", "--json"], project)))
    assert {"baseline", "enhanced"} <= set(found)
    for name, cbam in (("baseline", False), ("enhanced", True)):
        params = found[name]["params"]["params.yaml"]["data"]
        assert params["model"]["cbam"] is cbam and params["augment"]["enabled"] is cbam
        assert 0 <= found[name]["metrics"]["metrics/eval.json"]["data"]["miou"] <= 1


def test_the_readme_exp_show_view_is_narrow_and_shows_the_compared_params(project: Path):
    pattern = ".*/|Created|final_|(iou|pa|precision|dice|mean)_"
    assert f"--drop '{pattern}'" in (REPO / "README.md").read_text()  # the view the README shows
    header = run(["dvc", "exp", "show", "--only-changed", "--drop", pattern, "--csv"], project).splitlines()[0]
    columns = header.split(",")
    assert {"model.cbam", "augment.enabled", "miou", "mdice", "mpa", "best_val_miou"} <= set(columns)
    assert not [c for c in columns if "/" in c or c.startswith(("iou_", "pa_", "dice_", "final_", "mean_", "images"))]
    assert len(columns) <= 14, columns


def test_both_runs_are_in_one_mlflow_experiment_under_their_dvc_names(project: Path):
    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("segpipe")
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert {"baseline", "enhanced"} <= set(runs)
    for name in ("baseline", "enhanced"):
        assert runs[name].data.tags["dvc.exp_name"] == name
        assert "miou" in runs[name].data.metrics and "val_miou" in runs[name].data.metrics
    assert runs["enhanced"].data.params["model.cbam"] == "true"
    assert set(runs["baseline"].data.metrics) == set(runs["enhanced"].data.metrics)


def test_compare_prints_a_verdict(project: Path):
    out = run([sys.executable, "-m", "pipeline", "compare", "baseline", "enhanced"], project)
    verdict = out.splitlines()[2]
    assert verdict.startswith("**") and (" better by " in verdict or "no detectable difference" in verdict)


def test_each_run_registered_its_model_and_promote_points_an_alias_at_one(project: Path):
    out = run([sys.executable, "-m", "pipeline", "promote", "enhanced", "--alias", "champion"], project)
    assert "is now models:/segpipe@champion" in out
    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    versions = client.search_model_versions("name = 'segpipe'")
    assert sorted(v.tags.get("dvc.exp_name") for v in versions) == ["baseline", "enhanced"]
    assert client.get_model_version_by_alias("segpipe", "champion").tags["dvc.exp_name"] == "enhanced"


def test_queued_seeds_run_in_parallel_and_log_to_the_project_database(project: Path):
    run(["dvc", "exp", "run", "--queue", "-S", "base.seed=1,2", "-S", "model.cbam=true"], project)
    # Not through run(): its captured pipes would stay open as long as a worker lives, and a DVC
    # worker sometimes lingers after "shutting down due to empty queue"; the status is polled.
    subprocess.run(["dvc", "queue", "start", "-j", "2"], cwd=project, env=run_env(), check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)
    wait_for_queue(project)
    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("segpipe")
    seeds = {r.data.params["base.seed"] for r in client.search_runs([experiment.experiment_id])}
    assert {"1", "2"} <= seeds
    assert len(client.search_model_versions("name = 'segpipe'")) == 4  # both parallel runs published too
    # The queued runs ran in copies of the repo under .dvc/tmp/exps, yet logged here, finished.
    out = run([sys.executable, "-m", "pipeline", "compare", "baseline", "filter:params.`base.seed` != '42'"], project)
    assert "B: 2 run(s)" in out
