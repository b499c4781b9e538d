"""The SLURM examples (scripts/slurm/) on a real single-node SLURM cluster that the test starts:
munged, slurmctld and slurmd as root, with a slurm.conf of its own in a temporary folder."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest

from tests.helpers import REPO, TINY, free_port, make_project, merge, run

pytestmark = [
    pytest.mark.slow,  # a cluster and DVC pipelines: about two minutes
    pytest.mark.skipif(
        not all(shutil.which(tool) for tool in ("munged", "slurmctld", "slurmd", "sbatch")),
        reason="SLURM is not installed (Debian: apt-get install slurm-wlm munge; .ci/run does)",
    ),
    pytest.mark.skipif(os.geteuid() != 0, reason="starts SLURM's daemons, which run as root"),
]

SLURM_CONF = """\
ClusterName=segpipe-test
SlurmctldHost={host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={folder}/munge.socket
CredType=cred/munge
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd.pid
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
SlurmctldLogFile={folder}/slurmctld.log
SlurmdLogFile={folder}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MpiDefault=none
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN
PartitionName=test Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


def wait_until(check, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what} within {timeout} s"
        time.sleep(0.5)


@pytest.fixture(scope="module")
def slurm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A one-node cluster; yields the environment its client commands (sbatch) need."""
    folder = tmp_path_factory.mktemp("slurm")
    for name in ("state", "spool"):
        (folder / name).mkdir()
    subprocess.run(["mungekey", "--create", f"--keyfile={folder}/munge.key"], check=True)
    host = socket.gethostname().split(".")[0]  # the name slurmd looks itself up by
    conf = folder / "slurm.conf"
    conf.write_text(SLURM_CONF.format(
        host=host, folder=folder, ctld_port=free_port(), d_port=free_port(), cpus=os.cpu_count()
    ))
    env = {**os.environ, "SLURM_CONF": str(conf)}
    daemons = []
    try:
        munged = [
            "munged", "--foreground", "--force", f"--socket={folder}/munge.socket", f"--key-file={folder}/munge.key",
            f"--log-file={folder}/munged.log", f"--pid-file={folder}/munged.pid", f"--seed-file={folder}/munged.seed",
        ]
        daemons.append(subprocess.Popen(munged, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_until((folder / "munge.socket").exists, "munged made its socket")
        for daemon in (["slurmctld", "-D", "-i", "-f", str(conf)], ["slurmd", "-D", "-f", str(conf)]):
            daemons.append(subprocess.Popen(daemon, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

        def node_idle() -> bool:
            state = subprocess.run(["sinfo", "--noheader", "--format=%t"], env=env, capture_output=True, text=True)
            return state.stdout.strip() == "idle"

        wait_until(node_idle, "the node came up idle")
        yield env
    finally:
        for daemon in reversed(daemons):
            daemon.terminate()
            daemon.wait(30)


def sbatch(args: list[str], cwd: Path, env: dict[str, str]) -> str:
    """Submit and wait for the job (`sbatch --wait` exits with the job's exit code); returns its id."""
    env = {**env, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)
    done = subprocess.run(["sbatch", "--wait", "--parsable", *args], cwd=cwd, env=env, capture_output=True, text=True)
    logs = "\n".join(f"== {p.name}\n{p.read_text()[-3000:]}" for p in sorted(cwd.glob("slurm-*.out")))
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}\n{logs}"
    return done.stdout.strip().split(";")[0]


def test_a_job_runs(slurm: dict[str, str], tmp_path: Path):
    (tmp_path / "job.sh").write_text("#!/bin/bash\necho node $SLURM_JOB_NODELIST\n")
    job = sbatch(["--output=job-%j.out", "job.sh"], tmp_path, slurm)
    assert (tmp_path / f"job-{job}.out").read_text().startswith("node ")


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny project with the SLURM scripts, pushed to a bare git remote `origin`, outputs to a
    DVC remote (a folder)."""
    root = make_project(tmp_path_factory.mktemp("slurm-project") / "project", overrides=merge(TINY, {
        "split": {"val_fraction": 0.3}, "train": {"device": "cpu"},
    }))
    shutil.copytree(REPO / "scripts" / "slurm", root / "scripts" / "slurm")
    remote = root.parent / "origin.git"
    run(["git", "init", "-q", "--bare", str(remote)], root.parent)
    run(["git", "remote", "add", "origin", str(remote)], root)
    run(["dvc", "remote", "add", "-d", "storage", str(root.parent / "dvc-storage")], root)
    (root / ".gitignore").write_text((root / ".gitignore").read_text() + "slurm-*.out\n")
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-qm", "slurm scripts and remotes"], root)
    run(["git", "push", "-q", "origin", "HEAD"], root)
    return root


def test_the_ddp_script_trains_under_srun_torchrun_and_leaves_the_pipeline_up_to_date(
    slurm: dict[str, str], project: Path
):
    # One node here (a real cluster: --nodes=2 or more); two CPU processes stand in for its GPUs.
    env = {**slurm, "NPROC_PER_NODE": "2", "RDZV_PORT": str(free_port())}
    sbatch(["--nodes=1", "--gpus-per-node=0", "--cpus-per-task=1", "scripts/slurm/train_ddp.sbatch"], project, env)
    trained = json.loads((project / "metrics" / "train.json").read_text())
    assert 0 <= json.loads((project / "metrics" / "eval.json").read_text())["miou"] <= 1
    assert "up to date" in run(["dvc", "status"], project)  # dvc commit recorded the torchrun training
    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    (only,) = client.search_runs([client.get_experiment_by_name("segpipe").experiment_id])  # rank 0's
    assert only.data.metrics["best_val_miou"] == pytest.approx(trained["best_val_miou"], abs=1e-6)


def test_the_sweep_array_runs_one_fold_and_seed_per_task_and_pushes_them(slurm: dict[str, str], project: Path):
    env = {**slurm, "FOLDS": "2", "SEEDS": "7"}
    job = sbatch(["--array=0-1", "--gpus=0", "--cpus-per-task=1", "scripts/slurm/sweep.sbatch"], project, env)
    pushed = run(["git", "ls-remote", "origin", "refs/exps/*"], project)
    names = sorted(line.rsplit("/", 1)[1] for line in pushed.splitlines())
    assert names == [f"fold0-seed7-job{job}", f"fold1-seed7-job{job}"]
    shown = json.loads(run(["dvc", "exp", "show", "--json"], project))
    params = {
        rev["name"]: rev["data"]["params"]["params.yaml"]["data"]
        for baseline in shown for experiment in baseline.get("experiments") or [] for rev in experiment["revs"]
        if rev.get("name", "").endswith(f"job{job}")
    }
    assert {name: (p["split"]["folds"], p["split"]["fold"], p["base"]["seed"]) for name, p in params.items()} == {
        f"fold0-seed7-job{job}": (2, 0, 7), f"fold1-seed7-job{job}": (2, 1, 7),
    }
    assert any((project.parent / "dvc-storage").rglob("*")), "the outputs went to the DVC remote"
