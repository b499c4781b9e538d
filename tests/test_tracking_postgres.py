"""MLflow for a team: a tracking server on a real PostgreSQL database (the `pgserver` wheel's
server binaries, no mock, no SQLite) with a proxied artifact store, and four trainings logging to
it at once through MLFLOW_TRACKING_URI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import mlflow
import psycopg
import pytest

from tests.helpers import free_port, prepare_run

pgserver = pytest.importorskip("pgserver", reason="pgserver (requirements.txt) ships the PostgreSQL server")

pytestmark = pytest.mark.slow  # a database, a tracking server and four trainings: about a minute

RUNS = 4


@pytest.fixture(scope="module")
def postgres() -> Iterator[pgserver.PostgresServer]:
    """A PostgreSQL server with an empty database `mlflow`, deleted afterwards."""
    # Not under pytest's tmp folder: run as root, pgserver runs PostgreSQL as its own user, which
    # cannot enter pytest's owner-only folders (and PostgreSQL refuses to run as root).
    with tempfile.TemporaryDirectory(prefix="segpipe-postgres-") as folder:
        os.chmod(folder, 0o755)
        server = pgserver.get_server(Path(folder), cleanup_mode="delete")
        server.psql("CREATE DATABASE mlflow;")
        yield server
        server.cleanup()


@pytest.fixture(scope="module")
def tracking_server(postgres, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """`mlflow server` on the PostgreSQL database, artifacts proxied into a folder; yields
    (its URI, the artifact folder)."""
    folder = tmp_path_factory.mktemp("tracking-server")
    artifacts, port = folder / "artifacts", free_port()
    command = [
        sys.executable, "-m", "mlflow", "server", "--backend-store-uri", postgres.get_uri("mlflow"),
        "--artifacts-destination", str(artifacts), "--host", "127.0.0.1", "--port", str(port), "--workers", "2",
    ]
    with open(folder / "server.log", "w") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120  # the first start creates MLflow's tables in PostgreSQL
        while True:
            assert server.poll() is None, (folder / "server.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "mlflow server did not answer in 120 s"
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2):
                    break
            except OSError:
                time.sleep(0.5)
        yield uri, artifacts
    finally:
        server.terminate()
        server.wait(30)


TRAIN = "python -m pipeline train processed splits augmented models --quiet"
EVALUATE = "python -m pipeline evaluate models/best.pt processed splits --quiet"


@pytest.fixture(scope="module")
def runs(tracking_server, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Four projects (base.seed 1..4), each running train then evaluate, all four at once,
    logging to the server; returns seed -> project folder."""
    uri, _ = tracking_server
    projects, processes = {}, []
    for seed in range(1, RUNS + 1):
        root = tmp_path_factory.mktemp(f"seed{seed}")
        env = {**prepare_run(root, epochs=2, save_period=0, seed=seed), "MLFLOW_TRACKING_URI": uri}
        env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
        processes.append(
            subprocess.Popen(f"{TRAIN} && {EVALUATE}", shell=True, cwd=root, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
        )
        projects[str(seed)] = root
    for process in processes:
        out, _ = process.communicate(timeout=300)
        assert process.returncode == 0, out[-3000:]
        assert "without tracking" not in out, out  # no process lost its connection and went on untracked
    return projects


def test_all_runs_with_params_and_metrics_are_in_postgresql(postgres, tracking_server, runs: dict[str, Path]):
    client = mlflow.MlflowClient(tracking_server[0])
    experiment = client.get_experiment_by_name("segpipe")
    found = {r.data.params["base.seed"]: r for r in client.search_runs([experiment.experiment_id])}
    assert set(found) == set(runs)
    for seed, run in found.items():
        assert run.info.status == "FINISHED"
        trained = json.loads((runs[seed] / "metrics" / "train.json").read_text())
        evaluated = json.loads((runs[seed] / "metrics" / "eval.json").read_text())
        assert run.data.metrics["best_val_miou"] == pytest.approx(trained["best_val_miou"], abs=1e-6)
        assert run.data.metrics["miou"] == pytest.approx(evaluated["miou"], abs=1e-6)  # the evaluate stage's
        assert (runs[seed] / "models" / "mlflow_run_id.txt").read_text().strip() == run.info.run_id
        assert not (runs[seed] / "mlflow.db").exists() and not (runs[seed] / "mlruns").exists()
    # The rows are in PostgreSQL itself, not in some store beside it.
    with psycopg.connect(postgres.get_uri("mlflow")) as connection:
        assert connection.execute("SELECT count(*) FROM runs WHERE status = 'FINISHED'").fetchone() == (RUNS,)


def test_artifacts_went_through_the_server_to_its_store(tracking_server, runs: dict[str, Path]):
    uri, artifacts = tracking_server
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("segpipe")
    for run in client.search_runs([experiment.experiment_id]):
        logged = {a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")}
        assert logged == {"checkpoints/best.pt"}
        stored = artifacts / experiment.experiment_id / run.info.run_id / "artifacts" / "checkpoints" / "best.pt"
        assert stored.stat().st_size > 0
        assert {a.path for a in client.list_artifacts(run.info.run_id, "plots")} >= {"plots/loss.png", "plots/miou.png"}


def test_every_run_registered_a_model_version(tracking_server, runs: dict[str, Path]):
    client = mlflow.MlflowClient(tracking_server[0])
    versions = client.search_model_versions("name = 'segpipe'")
    experiment = client.get_experiment_by_name("segpipe")
    run_ids = {r.info.run_id for r in client.search_runs([experiment.experiment_id])}
    assert sorted(int(v.version) for v in versions) == list(range(1, RUNS + 1))
    assert {v.run_id for v in versions} == run_ids
    assert all(v.status == "READY" for v in versions)
