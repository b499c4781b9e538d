"""Device choice: errors name the setting the user wrote the device in; parallel runs lease
different GPUs."""

from __future__ import annotations

import fcntl
import os
import select
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from segpipe import runtime
from segpipe.errors import SegpipeError
from segpipe.runtime import resolve_device
from tests.helpers import REPO


def test_a_device_that_is_not_one_is_named_with_its_setting():
    with pytest.raises(SegpipeError, match=r"^serve\.device: 'gpu0' is not a device"):
        resolve_device("gpu0", "serve.device")
    with pytest.raises(SegpipeError, match=r"^train\.device: 'gpu0'"):
        resolve_device("gpu0")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_cuda_without_a_gpu_tells_which_setting_to_change():
    with pytest.raises(SegpipeError, match=r"^--device is cuda but no CUDA GPU is visible; set --device to auto or cpu$"):
        resolve_device("cuda", "--device")


def test_cpu_and_auto_resolve():
    assert resolve_device("cpu", "evaluate.device") == torch.device("cpu")
    assert resolve_device("auto").type in {"cpu", "cuda", "mps"}


# A training process's device choice on a machine with `count` CUDA GPUs (faked: the test machine
# may have none). It prints the device `auto` resolved to and holds it until its stdin closes.
LEASE_HOLDER = """
import logging, sys, torch
torch.cuda.is_available = lambda: True
torch.cuda.device_count = lambda: int(sys.argv[1])
logging.basicConfig(level=logging.INFO, format="%(message)s")
from segpipe import runtime
runtime.LEASE_POLL = 0.1
print(runtime.resolve_device("auto", lease=True), flush=True)
sys.stdin.read()
"""


def start_holder(lock_dir: Path, count: int) -> subprocess.Popen:
    env = {**os.environ, "SEGPIPE_GPU_LOCK_DIR": str(lock_dir), "PYTHONPATH": str(REPO / "src")}
    for name in ("CUDA_VISIBLE_DEVICES", "LOCAL_RANK"):
        env.pop(name, None)
    return subprocess.Popen(
        [sys.executable, "-c", LEASE_HOLDER, str(count)],
        env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def device_of(holder: subprocess.Popen, timeout: float = 60) -> str:
    """The device the holder printed (it prints once it holds a GPU)."""
    ready, _, _ = select.select([holder.stdout], [], [], timeout)
    assert ready, f"no GPU leased in {timeout} s"
    return holder.stdout.readline().strip()


@pytest.fixture
def holders():
    started: list[subprocess.Popen] = []
    yield started
    for holder in started:
        holder.kill()
        holder.wait()
        for stream in (holder.stdin, holder.stdout, holder.stderr):
            stream.close()


def test_two_concurrent_runs_lease_different_gpus(tmp_path: Path, holders: list):
    holders += [start_holder(tmp_path, count=2) for _ in range(2)]
    assert sorted(device_of(h) for h in holders) == ["cuda:0", "cuda:1"]
    assert (tmp_path / "gpu0.lock").exists() and (tmp_path / "gpu1.lock").exists()


def test_a_run_waits_while_every_gpu_is_held_and_a_killed_holder_frees_its_gpu(tmp_path: Path, holders: list):
    holders.append(start_holder(tmp_path, count=1))
    assert device_of(holders[0]) == "cuda:0"
    holders.append(start_holder(tmp_path, count=1))
    waiting = holders[1].stderr.readline()  # printed once it found every GPU held
    assert waiting.startswith(f"all 1 GPUs are held by other segpipe runs (GPU 0: pid {holders[0].pid}); waiting")
    assert not select.select([holders[1].stdout], [], [], 1.0)[0]  # still waiting
    os.kill(holders[0].pid, signal.SIGKILL)
    holders[0].wait()
    assert device_of(holders[1]) == "cuda:0"
    assert holders[1].stderr.readline() == f"using GPU 0 of 1 (lease {tmp_path / 'gpu0.lock'})\n"


@pytest.fixture
def all_gpus_held(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Two faked GPUs, both locked by this test, and a lease that fails the test instead of waiting."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("SEGPIPE_GPU_LOCK_DIR", str(tmp_path))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.setattr(runtime.time, "sleep", lambda seconds: pytest.fail("waited for a GPU lease"))
    files = [open(tmp_path / f"gpu{index}.lock", "w") for index in range(2)]
    for handle in files:
        fcntl.flock(handle, fcntl.LOCK_EX)
    yield monkeypatch
    for handle in files:
        handle.close()


def test_cuda_visible_devices_an_explicit_gpu_and_torchrun_bypass_the_lease(all_gpus_held: pytest.MonkeyPatch):
    assert resolve_device("cuda:1", lease=True) == torch.device("cuda", 1)
    assert resolve_device("auto", "serve.device") == torch.device("cuda", 0)  # serving never leases
    all_gpus_held.setenv("CUDA_VISIBLE_DEVICES", "3")  # the user's (or SLURM's) choice: its first GPU
    assert resolve_device("auto", lease=True) == torch.device("cuda", 0)
    all_gpus_held.delenv("CUDA_VISIBLE_DEVICES")
    all_gpus_held.setenv("LOCAL_RANK", "1")
    assert resolve_device("auto", lease=True) == torch.device("cuda", 1)
