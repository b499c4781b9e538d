"""Shared fixtures: tiny datasets made on the fly (no test depends on files outside tmp), MLflow
under tmp, and one torch thread. Helper functions live in tests/helpers.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from segpipe.data.cache import CACHE_ENV
from segpipe.layout import Sample
from tests.helpers import make_processed, tiny_samples, use_tmp_mlflow


@pytest.fixture
def processed(tmp_path: Path) -> Path:
    return make_processed(tmp_path / "processed")


@pytest.fixture(autouse=True)
def one_thread():
    # The tests' models are tiny: they run fastest on one thread, and two threads on a busy 2-core machine wait
    # on each other far longer than they compute.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def fresh_mlflow_experiment(monkeypatch: pytest.MonkeyPatch):
    """mlflow.set_experiment leaves its choice in a module global and in MLFLOW_EXPERIMENT_ID, where
    a later test's runs (on another store) would look for an experiment id that store lacks."""
    import mlflow.tracking.fluent as fluent

    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    yield
    fluent._active_experiment_id = None


@pytest.fixture(autouse=True, scope="session")
def decoded_cache_outside_the_repo(tmp_path_factory: pytest.TempPathFactory):
    """Module-scoped fixtures that train run before any per-test fixture: they use a session cache."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CACHE_ENV, str(tmp_path_factory.mktemp("session-decoded-cache")))
        yield


@pytest.fixture(autouse=True)
def decoded_cache_in_tmp(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Training's decoded cache (by default at the project root) in a fresh folder per test."""
    root = tmp_path_factory.mktemp("decoded-cache")
    monkeypatch.setenv(CACHE_ENV, str(root))
    return root


@pytest.fixture
def samples(tmp_path: Path) -> list[Sample]:
    return tiny_samples(tmp_path / "processed")


@pytest.fixture
def mlflow_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """MLflow's database and artifacts under tmp_path (never in the repo); returns the db path."""
    use_tmp_mlflow(monkeypatch, tmp_path)
    return tmp_path / "mlflow.db"
