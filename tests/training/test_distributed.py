"""The train command under `torchrun`: two CPU processes (gloo) train one model, rank 0 writes it,
on one machine and as two nodes meeting at a c10d rendezvous."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import torch

from segpipe.models.checkpoint import load_checkpoint, model_from_checkpoint
from tests.helpers import free_port, prepare_run

TORCHRUN = Path(sys.executable).parent / "torchrun"


TRAIN = ["-m", "pipeline", "train", "processed", "splits", "augmented", "models", "--quiet"]


def test_torchrun_with_two_cpu_processes_trains_and_only_rank_0_writes(tmp_path: Path):
    env = prepare_run(tmp_path)
    command = [
        str(TORCHRUN), "--standalone", "--nproc_per_node=2", "--log-dir", "logs", "--redirects", "3", *TRAIN,
    ]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    logs = {path.parent.name: path.read_text() for path in (tmp_path / "logs").rglob("stdout.log")}
    assert done.returncode == 0, done.stderr[-3000:] + "\n".join(logs.values())

    # Rank 0 reports (it wrote the outputs); rank 1 trained its shard and returned without writing.
    assert set(logs) == {"0", "1"}
    assert "train: best val mIoU" in logs["0"]
    assert "train: registered as MLflow model 'segpipe' version 1" in logs["0"]  # the best model, published once
    assert "train:" not in logs["1"]
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == [
        "best.pt", "epoch_002.pt", "last.pt", "mlflow_run_id.txt",
    ]
    info = json.loads((tmp_path / "metrics" / "train_info.json").read_text())
    assert (info["epochs"], info["train_images"], info["val_images"]) == (3, 4, 1)
    history = (tmp_path / "metrics" / "train_history.csv").read_text().splitlines()
    assert len(history) == 1 + 3

    checkpoint = load_checkpoint(tmp_path / "models" / "last.pt")
    assert not any(key.startswith("module.") for key in checkpoint["model"])  # not DDP's wrapper names
    model = model_from_checkpoint(checkpoint).eval()
    with torch.no_grad():
        assert torch.isfinite(model(torch.randn(1, 3, 32, 32))).all()


@pytest.mark.slow  # three torchrun agents and four training processes: about a minute on 2 cores
def test_two_nodes_at_a_c10d_rendezvous_train_as_one_node_with_two_processes(tmp_path: Path):
    """Two torchrun agents, each a "node" with its own folder (its own disk), meet at a c10d
    rendezvous on 127.0.0.1 and train as one agent with two processes does: same train.json. Only
    the node that got rank 0 writes outputs and an MLflow run."""
    reference = tmp_path / "one_node"
    reference.mkdir()
    env = prepare_run(reference, epochs=2, save_period=0)
    one = [str(TORCHRUN), "--standalone", "--nproc-per-node=2", *TRAIN]
    done = subprocess.run(one, cwd=reference, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    port = free_port()
    agents = []
    for node in ("node_a", "node_b"):
        (tmp_path / node).mkdir()
        env = prepare_run(tmp_path / node, epochs=2, save_period=0)
        command = [
            str(TORCHRUN), "--nnodes=2", "--nproc-per-node=1", "--rdzv-backend=c10d",
            f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=segpipe-test", "--local-addr=127.0.0.1", *TRAIN,
        ]
        agents.append(subprocess.Popen(command, cwd=tmp_path / node, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = [agent.communicate(timeout=300) for agent in agents]
    for agent, (_, err) in zip(agents, outputs):
        assert agent.returncode == 0, err[-3000:]

    writers = [node for node in ("node_a", "node_b") if (tmp_path / node / "metrics" / "train.json").exists()]
    assert len(writers) == 1, "exactly one node (rank 0's) writes the outputs"
    writer = tmp_path / writers[0]
    other = tmp_path / ({"node_a", "node_b"} - set(writers)).pop()
    assert not (other / "models").exists() and not (other / "metrics").exists() and not (other / "mlflow.db").exists()
    assert json.loads((writer / "metrics" / "train.json").read_text()) == json.loads(
        (reference / "metrics" / "train.json").read_text()
    )
    client = mlflow.MlflowClient(f"sqlite:///{writer}/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("segpipe").experiment_id])
    assert run.data.metrics["best_val_miou"] == pytest.approx(
        json.loads((writer / "metrics" / "train.json").read_text())["best_val_miou"], abs=1e-6
    )
