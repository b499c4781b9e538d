"""Tiny training settings shared by the training tests: a 4-channel plain U-Net at 32 px on CPU."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from segpipe.config import Params, parse_params
from segpipe.dataset import Sample, samples_in
from tests.conftest import make_processed


def tiny_params(train: dict[str, Any] | None = None, **sections: dict[str, Any]) -> Params:
    """Params for a plain U-Net of width 4 trained on 32 px CPU batches; `train` and other
    sections override the defaults key by key."""
    data = {
        "model": {"backbone": "plain", "base_channels": 4, **sections.pop("model", {})},
        "train": {
            "image_size": 32,
            "epochs": 2,
            "batch_size": 2,
            "freeze_batch_size": 2,
            "device": "cpu",
            "save_period": 0,
            **(train or {}),
        },
        **sections,
    }
    return parse_params(data)


def tiny_samples(root: Path, count: int = 2) -> list[Sample]:
    """`count` random 24x32 images with a class-1 rectangle each."""
    make_processed(root, count=count)
    return samples_in(root, [f"img{i:03d}" for i in range(count)])


class Interrupt:
    """An on_epoch_end callback that stops the run, as Ctrl-C would, after epoch `after`."""

    def __init__(self, after: int) -> None:
        self.after = after

    def __call__(self, state) -> None:
        if state.epoch == self.after:
            raise KeyboardInterrupt


def state_snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@pytest.fixture(autouse=True)
def one_thread():
    # Models this small run fastest on one thread, and two threads on a busy 2-core machine wait
    # on each other far longer than they compute.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def samples(tmp_path: Path) -> list[Sample]:
    return tiny_samples(tmp_path / "processed")


@pytest.fixture
def mlflow_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """MLflow's database and artifacts under tmp_path (never in the repo); returns the db path."""
    use_tmp_mlflow(monkeypatch, tmp_path)
    return tmp_path / "mlflow.db"


def use_tmp_mlflow(monkeypatch: pytest.MonkeyPatch, root: Path) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root}/mlflow.db")
    monkeypatch.setenv("DVC_ROOT", str(root))  # the project root, where artifacts (mlruns/) go
    monkeypatch.chdir(root)
    for name in ("DVC_EXP_NAME", "DVC_EXP_BASELINE_REV", "WORLD_SIZE", "RANK"):
        monkeypatch.delenv(name, raising=False)
